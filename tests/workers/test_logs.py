"""Log set-up: levels per logger family, the text and JSON formats, no terminal codes."""
from __future__ import annotations

import io
import json
import logging
import warnings

import pytest

from workers import logs


def emit_everything() -> None:
    logging.getLogger("cased.worker").info("loaded model tiny")
    logging.getLogger("cased.worker").debug("a detail")
    logging.getLogger("faust.transport").info("the topic table")
    logging.getLogger("aiokafka.consumer").warning("a rebalance")
    logging.getLogger("kafka.conn").error("connection refused")
    logging.warning("No pretrained weights loaded")  # open_clip logs on the root logger


def test_a_worker_logs_its_own_info_and_the_libraries_warnings():
    out = io.StringIO()
    logs.configure("info", "text", stream=out)
    emit_everything()
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "INFO cased.worker: loaded model tiny", "WARNING aiokafka.consumer: a rebalance",
        "WARNING root: No pretrained weights loaded"]
    assert "\x1b" not in out.getvalue()


def test_other_commands_log_their_own_warnings_only():
    out = io.StringIO()
    logs.configure("info", "text", stream=out, service=False)
    emit_everything()
    logging.getLogger("cased.view").warning("reading Kafka failed")
    assert [line.split(" ", 1)[1] for line in out.getvalue().splitlines()] == ["WARNING cased.view: reading Kafka failed"]


def test_debug_opens_every_logger():
    out = io.StringIO()
    logs.configure("debug", "text", stream=out)
    emit_everything()
    assert len(out.getvalue().splitlines()) == 6


def test_json_is_one_object_a_line_with_the_event_it_is_about():
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    log = logging.getLogger("cased.worker")
    log.warning("event failed:\nsecond line", extra={"event_id": "e1", "stream_id": "cam-1", "partition": 3})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("a batch failed")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("deprecated thing")
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["message"] == "event failed:\nsecond line" and first["level"] == "WARNING"
    assert (first["logger"], first["event_id"], first["stream_id"], first["partition"]) == ("cased.worker", "e1",
                                                                                           "cam-1", 3)
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert "ValueError: boom" in second["exception"] and "event_id" not in second
    assert third["logger"] == "py.warnings" and "deprecated thing" in third["message"]


def test_a_bad_level_or_format_is_refused():
    with pytest.raises(ValueError, match="log level 'loud'"):
        logs.configure("loud")
    with pytest.raises(ValueError, match="log format 'xml'"):
        logs.configure("info", "xml")
