"""`cased demo`: the embedded broker, S3 endpoint, a worker and the live view, end to end."""
from __future__ import annotations

import re
import signal
import subprocess
import sys

from cased_core.streams import names_of


def test_the_demo_runs_end_to_end():
    """`cased demo` as shipped: embedded broker, a worker, the camera and the upload stream, all answered,
    clean exit; the camera's consistent label changes exactly twice, star -> moon -> heart with one name
    for the moon, while its raw label flickers, and the live view shows the same two changes."""
    result = subprocess.run([sys.executable, "-m", "workers.tools.cli", "demo"], capture_output=True, text=True,
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
