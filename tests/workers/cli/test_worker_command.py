"""`cased worker` as an operator meets it: its web port checked first, a short start in the log, text or
JSON lines with no terminal codes, Ctrl-C quiet with status 130, SIGTERM status 0."""
from __future__ import annotations

import json
import os
import pty
import signal
import socket
import subprocess
import sys

from tests.workers.helpers import PARTITIONS, WorkerProcess, wait_ready
from workers.cli.broker import free_port


def test_a_taken_web_port_is_one_line_before_anything_else():
    """Checked before the broker is reached or the model loads: the broker here does not exist, and the
    error is about the port."""
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "workers.cli", "worker", "--web-port", str(port),
                                 "--broker", f"kafka://127.0.0.1:{free_port()}"],
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cased: error: web_port {port}: cannot listen on 0.0.0.0:{port} "
                                                   "(Address already in use)"), result.stderr
    assert "CASED_WEB_PORT or --web-port" in lines[0]


def test_ctrl_c_stops_a_worker_quietly_with_130_and_its_log_has_no_terminal_codes(broker, tmp_path):
    """stdout at a terminal, stderr to a file (`cased worker 2>worker.log`): the file gets plain lines,
    a few for the start."""
    log_path = tmp_path / "worker.log"
    terminal, terminal_end = pty.openpty()
    web_port = free_port()
    env = {**os.environ, "CASED_BROKER": broker.url, "CASED_PARTITIONS": str(PARTITIONS),
           "CASED_WEB_PORT": str(web_port)}
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker"], env=env,
                                   stdout=terminal_end, stderr=log)
    os.close(terminal_end)
    try:
        wait_ready(_Started(process, web_port, log_path))
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(terminal)
    text = log_path.read_text()
    assert "\x1b" not in text and "Traceback" not in text, text
    lines = text.splitlines()
    # What it loaded, where it listens, its partitions (and a line per partition's history restored);
    # nothing of Faust's, nothing on the way out.
    assert all(" INFO cased.worker: " in line for line in lines), text
    assert any("loaded model tiny@" in line for line in lines), text
    assert any(f"/metrics on http://0.0.0.0:{web_port}" in line for line in lines), text
    assert any("assigned images.in partitions:" in line for line in lines), text
    assert len(lines) <= 4 + PARTITIONS, text


def test_json_logs_are_one_object_a_line_and_sigterm_exits_0(broker, workers):
    worker = workers(broker.url, {"CASED_LOG_FORMAT": "json"})
    wait_ready(worker)
    worker.stop(signal.SIGTERM)
    assert worker.process.returncode == 0
    entries = [json.loads(line) for line in worker.log.read_text().splitlines()]  # every line parses
    assert entries and all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert any(entry["message"].startswith("loaded model tiny@") and entry["logger"] == "cased.worker"
               for entry in entries)


class _Started(WorkerProcess):
    """A worker process started by the test itself, for wait_ready."""

    def __init__(self, process: subprocess.Popen, web_port: int, log):
        self.process, self.web_port, self.log = process, web_port, log
