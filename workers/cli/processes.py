"""Stopping the child processes the tools and the tests start (workers, the broker, Prometheus)."""
from __future__ import annotations

import signal
import subprocess


def stop_process(process: subprocess.Popen, timeout_s: float = 20.0, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to `process` if it still runs and wait for it to exit; killed after `timeout_s`."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
