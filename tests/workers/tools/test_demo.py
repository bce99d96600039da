"""`cased demo`: the embedded broker, S3 endpoint, a worker and the live view, end to end."""
from __future__ import annotations

import signal
import subprocess
import sys


def test_the_demo_runs_end_to_end():
    """`cased demo`: embedded broker, a worker, a camera and an upload stream, all answered, clean exit."""
    result = subprocess.run([sys.executable, "-m", "workers.tools.cli", "demo", "--frames", "3"], capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "15 of 15 records received" in result.stdout, result.stdout
    assert "camera-1" in result.stdout and "uploads" in result.stdout
    assert "live view: http://127.0.0.1:" in result.stdout
    assert result.stderr == "" and "\x1b" not in result.stdout  # logs go to files; no terminal codes


def test_ctrl_c_stops_the_demo_quietly():
    demo = subprocess.Popen([sys.executable, "-m", "workers.tools.cli", "demo", "--frames", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in demo.stdout:  # everything runs once the view is up and the frames are published
            if line.startswith("published "):
                break
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=60)
    finally:
        demo.kill()
    assert demo.returncode == 130 and "Traceback" not in err and err.strip() == "", err[-2000:]
