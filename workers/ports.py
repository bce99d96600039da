"""Whether a TCP port can be listened on, checked before a slow start rather than after it."""
from __future__ import annotations

import socket


def port_problem(host: str, port: int) -> str | None:
    """Why `host`:`port` cannot be listened on now (in use, not an address of this machine), or None.

    The probe binds the way aiohttp's and the embedded servers' listeners do (SO_REUSEADDR), so a port
    left in TIME_WAIT by a process that just stopped is free, and one that something listens on is not.
    Port 0 (any free one) is always fine. A check, not a reservation: the port may be taken between this
    call and the real listen.

    Examples:
        >>> with socket.create_server(("127.0.0.1", 0)) as taken:
        ...     port_problem("127.0.0.1", taken.getsockname()[1])
        'Address already in use'
    """
    if port == 0:
        return None
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
    except socket.gaierror as err:
        return f"not an address of this machine ({err.strerror})"
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            return err.strerror or str(err)
    return None
