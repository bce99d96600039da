"""Logging for every command: one record a line on stderr, as text or as JSON (CASED_LOG_FORMAT).

The worker's own loggers (`cased.*`) log at CASED_LOG_LEVEL, the libraries' (Faust, mode, aiokafka,
aiohttp, boto, open_clip) at warning and above: a worker's start is a few lines saying what it loaded
and where it listens, not Faust's tables. The other commands print their results and one-line errors:
they log `cased.*` warnings and above only. At debug, everything logs.

No colour and no terminal codes in either format: a log line is the same whether it goes to a terminal,
a file or a collector. The JSON format is one object a line (`time`, `level`, `logger`, `message`, plus
`event_id`, `stream_id`, `topic`, `partition`, `offset` when the call passed them as `extra`, and
`exception` with the traceback as one string), the shape log pipelines (Fluent Bit, Vector, Loki,
Elasticsearch) parse without configuration.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
# Record attributes a call may pass as `extra=` that the JSON format carries as fields of their own.
CONTEXT_FIELDS = ("event_id", "stream_id", "topic", "partition", "offset")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _utc(record: logging.LogRecord) -> str:
    """The record's time in RFC 3339, UTC, to the millisecond: 2026-12-03T10:15:02.123Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line.

    Examples:
        >>> record = logging.LogRecord("cased.worker", logging.INFO, __file__, 1, "assigned %s", ("[0]",), None)
        >>> record.created, record.msecs, record.stream_id = 0.0, 0, "cam-1"
        >>> JsonFormatter().format(record)
        '{"time": "1970-01-01T00:00:00.000Z", "level": "INFO", "logger": "cased.worker", "message": "assigned [0]", "stream_id": "cam-1"}'
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": _utc(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        for name in CONTEXT_FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2026-12-03T10:15:02.123Z INFO cased.worker: message`, UTC, like the JSON format's time."""

    def __init__(self):
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc(record)


class _Handler(logging.StreamHandler):
    """A StreamHandler writing to `stream`, or without one to whatever sys.stderr is when a record comes
    (as logging's own last-resort handler does), so that a later redirection of sys.stderr is followed."""

    def __init__(self, stream: IO | None = None):
        self._fixed = stream
        super().__init__(stream)

    @property
    def stream(self) -> IO:
        return sys.stderr if self._fixed is None else self._fixed

    @stream.setter
    def stream(self, value: IO) -> None:  # StreamHandler sets it; the property above decides
        pass


def configure(level: str = "info", format: str = "text", stream: IO | None = None, service: bool = True) -> None:
    """Send every logger's records to `stream` (default: stderr), one line each, in place of the handler
    an earlier call added (a second call reconfigures).

    Args:
        level: the `cased.*` loggers' level, one of LEVELS; "debug" opens every library's too.
        format: "text" or "json".
        stream: where the lines go.
        service: a process that logs for operators (the worker, the demo's log file): the libraries'
            warnings too (Faust, aiokafka, aiohttp, open_clip's on the root logger). Otherwise (a
            command that prints its results and one-line errors) warnings and above of `cased.*` only.
            kafka-python's records, whose failures reach the user as the CLI's own one-line errors
            (workers.clients.connect), show at debug only.

    Raises:
        ValueError: an unknown level or format.
    """
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: choose one of {', '.join(LEVELS)}")
    if format not in FORMATS:
        raise ValueError(f"log format {format!r}: choose one of {', '.join(FORMATS)}")
    handler = _Handler(stream)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        if isinstance(old, _Handler):
            root.removeHandler(old)
    root.addHandler(handler)
    debug, off = level == "debug", logging.CRITICAL + 1
    own = _number(level) if service or debug else max(_number(level), logging.WARNING)
    libraries = logging.WARNING if service else off
    root.setLevel(logging.DEBUG if debug else max(own, libraries))
    logging.getLogger("cased").setLevel(own)
    logging.getLogger("kafka").setLevel(logging.DEBUG if debug else off)
    # warnings.warn() goes through logging too (logger py.warnings), in the same format.
    logging.captureWarnings(True)


def _number(level: str) -> int:
    return logging.getLevelName(level.upper())
