"""A TCP proxy on loopback that a test switches to make a real server fail the way an outage does."""
from __future__ import annotations

import socket
import threading

from workers.cli.broker import free_port

PASS, REFUSE, SLOW_DOWN = "pass", "refuse", "slow_down"

_SLOW_DOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                   b'<Message>Please reduce your request rate.</Message></Error>')


class SwitchableProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target_port` while `mode` is PASS. REFUSE closes the
    listening socket and every open connection (clients see connection refused or reset); SLOW_DOWN
    answers each HTTP request with S3's 503 SlowDown. Use as a context manager: always stopped."""

    def __init__(self, target_port: int, port: int | None = None):
        self.target_port, self.port = target_port, port or free_port()
        self.mode = PASS
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._stopped = threading.Event()

    def __enter__(self) -> "SwitchableProxy":
        self._listen()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self._close_all()

    def switch(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
        if mode == REFUSE:
            self._close_all()
        elif self._listener is None:
            self._listen()
        else:  # connections opened in the old mode keep its behaviour: cut them
            self._close_connections()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = listener.accept()
            except OSError:  # closed: refusing, or stopped
                return
            self._track(client)
            handler = self._slow_down if self.mode == SLOW_DOWN else self._forward
            threading.Thread(target=handler, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            self._drop(client)
            return
        self._track(upstream)
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        self._drop(source)
        self._drop(sink)

    def _slow_down(self, client: socket.socket) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(_SLOW_DOWN_BODY) + _SLOW_DOWN_BODY)
        except OSError:
            pass
        finally:
            self._drop(client)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def _close_connections(self) -> None:
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            self._drop(sock)

    def _close_all(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept (close alone does not)
            except OSError:
                pass
            listener.close()
        self._close_connections()
