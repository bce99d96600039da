"""`cased demo`: the embedded broker, S3 endpoint, a worker and the live view, end to end."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cased_core.tinyworld.cameras import names_of


def test_the_demo_runs_end_to_end_and_keeps_its_logs_in_one_folder():
    """`cased demo`: embedded broker, a worker, a camera and an upload stream, all answered, clean exit;
    the worker's, the broker's and the demo's own logs in the folder it names first."""
    result = subprocess.run([sys.executable, "-m", "workers.cli", "demo", "--frames", "3"], capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "15 of 15 records received" in result.stdout, result.stdout
    assert "camera-1" in result.stdout and "uploads" in result.stdout
    assert "live view: http://127.0.0.1:" in result.stdout
    assert result.stderr == "" and "\x1b" not in result.stdout  # logs go to files; no terminal codes
    folder = Path(re.match(r"logs in (\S+):", result.stdout.splitlines()[0]).group(1))
    assert sorted(p.name for p in folder.iterdir()) == ["broker.log", "demo.log", "worker.log"]
    worker_log = (folder / "worker.log").read_text()
    assert "loaded model tiny@" in worker_log and "assigned images.in partitions" in worker_log
    assert "\x1b" not in worker_log and "Traceback" not in worker_log
    assert "listening on: tcp://127.0.0.1:" in (folder / "broker.log").read_text()


def test_the_shipped_demo_camera_changes_its_label_exactly_at_its_two_cuts():
    """`cased demo` as shipped: embedded broker, a worker, the camera and the upload stream, all answered,
    clean exit; the camera's consistent label changes exactly twice, star -> moon -> heart with one name
    for the moon, while its raw label flickers, and the live view shows the same two changes."""
    result = subprocess.run([sys.executable, "-m", "workers.cli", "demo"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "42 of 42 records received" in out, out  # 3 scenes x 12 frames, and 6 photos
    assert "camera-1" in out and "uploads" in out
    assert "live view: http://127.0.0.1:" in out
    [(first, moon, last, frames, raw)] = re.findall(
        r"camera-1: consistent label (\S+) -> (\S+) -> (\S+) \(2 changes in (\d+) frames; the raw label changed "
        r"(\d+) times\)", out)
    assert (first, last, frames) == ("star", "heart", "36") and moon in names_of("moon") and int(raw) > 2, out
    assert "live view: camera-1 shows heart after 2 changes of its consistent label" in out, out
    assert result.stderr == "" and "\x1b" not in out  # logs go to files; no terminal codes


@pytest.mark.parametrize("moment", ["live view: ", "published "])
def test_ctrl_c_stops_the_demo_quietly(moment):
    """Ctrl-C while the worker starts (the view's Kafka clients connecting) or while it answers."""
    demo = subprocess.Popen([sys.executable, "-m", "workers.cli", "demo", "--frames", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        folder = Path(re.match(r"logs in (\S+):", demo.stdout.readline()).group(1))
        for line in demo.stdout:
            if line.startswith(moment):
                break
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=60)
    finally:
        demo.kill()
    assert demo.returncode == 130 and "Traceback" not in err and err.strip() == "", err[-2000:]
    # Nothing left running either: no task destroyed pending with the view's event loop.
    assert "Task was destroyed" not in (folder / "demo.log").read_text()
