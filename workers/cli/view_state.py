"""What `cased view` shows, as pure logic: the stream cards, dead letters, rates, lag and the workers
it was told to ask (ready, paused on a dependency's outage), bounded
whatever the topics hold (at most MAX_STREAMS streams, TIMELINE labels per stream, LETTERS_PER_REASON
dead letters for each of at most MAX_REASONS reasons, strings cut to MAX_TEXT characters). No I/O:
`workers.cli.view` feeds it decoded records and serves its snapshots."""
from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from typing import Any

from topics import events as ev

MAX_STREAMS = 48  # cards kept; a new stream beyond them drops the least recently updated one
TIMELINE = 30  # labels kept per stream
LETTERS_PER_REASON = 10  # recent dead letters kept per reason (all are counted)
MAX_REASONS = 32  # reasons kept apart; a foreign producer's others are counted under OTHER_REASON
OTHER_REASON = "(other)"
MAX_TEXT = 200  # characters of an id, a label or a reason shown; the contract bounds ids to 256 bytes
MAX_DETAIL = ev.MAX_DETAIL_CHARS  # a dead letter's detail, as the contract bounds it
MAX_CANDIDATES = 5
RATE_WINDOW_S = 5  # events per second: the mean over this many whole seconds
MAX_WORKERS = 32  # workers whose /status is shown


def fit_text(value: Any, limit: int = MAX_TEXT) -> str | None:
    """A string fit to show: any value as text, cut to `limit` characters; None stays None."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _number(value: Any) -> float | None:
    """A finite float, or None: JSON.parse refuses the NaN and Infinity that json.dumps writes."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def partition_lag(end: int | None, committed: int | None, beginning: int | None) -> int | None:
    """Records of a partition the group has not answered: `end` minus the `committed` offset; with
    no commit (None or negative), everything still retained (`end` minus `beginning`), as KEDA counts
    it; None when unknown."""
    if end is None:
        return None
    if committed is not None and committed >= 0:
        return max(0, end - committed)
    return None if beginning is None else max(0, end - beginning)


class RateCounter:
    """Events per second over the last `window_s` whole seconds, from the events' own timestamps, so
    that records read back when the view starts do not count as a burst. Holds one count per second."""

    def __init__(self, window_s: int = RATE_WINDOW_S):
        self.window_s = window_s
        self._counts: dict[int, int] = {}

    def add(self, ts: float, now: float) -> None:
        # A timestamp ahead of this clock (another machine's) counts as now.
        second, current = min(math.floor(ts), math.floor(now)), math.floor(now)
        if second >= current - self.window_s:
            self._counts[second] = self._counts.get(second, 0) + 1
        for old in [s for s in self._counts if s < current - self.window_s]:
            del self._counts[old]

    def rate(self, now: float) -> float:
        current = math.floor(now)
        return sum(n for s, n in self._counts.items() if current - self.window_s <= s < current) / self.window_s


class ViewState:
    """What the page shows, bounded, built from decoded records; no I/O, so it is testable in process.

    Args:
        max_streams: stream cards kept.
        timeline: labels kept per stream.
        letters_per_reason: recent dead letters kept per reason.
        max_reasons: reasons kept apart.
        rate_window_s: the window of the events-per-second figures.
    """

    def __init__(self, max_streams: int = MAX_STREAMS, timeline: int = TIMELINE,
                 letters_per_reason: int = LETTERS_PER_REASON, max_reasons: int = MAX_REASONS,
                 rate_window_s: int = RATE_WINDOW_S):
        if min(max_streams, timeline, letters_per_reason, max_reasons, rate_window_s) < 1:
            raise ValueError("ViewState bounds must be positive")
        self.max_streams, self.timeline, self.letters_per_reason = max_streams, timeline, letters_per_reason
        self.max_reasons = max_reasons
        # Least recently updated first: the one dropped when a new stream needs room.
        self.streams: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.thumbnails: OrderedDict[str, tuple[str | None, bytes, int]] = OrderedDict()
        self.reasons: dict[str, dict[str, Any]] = {}
        self.rates = {name: RateCounter(rate_window_s) for name in ("images_in", "labels", "dead_letters")}
        self.totals = {"images_in": 0, "labels": 0, "dead_letters": 0, "repeats": 0, "unreadable": 0,
                       "thumbnail_failures": 0}
        self.streams_dropped = 0
        self.lag: dict[str, Any] = {"partitions": [], "total": None, "error": None}
        self.kafka_error: str | None = None
        self.workers: dict[str, dict[str, Any]] = {}  # status URL -> what its /status said, or why not
        self.thumbnails_mode = "inline"
        self._serial = 0  # thumbnail versions: the page reloads a thumbnail when its number changes

    def add_label(self, event: ev.LabelEvent, ts: float | None = None, now: float | None = None) -> None:
        """One labels.out record.

        Args:
            event: the decoded record; its fields may hold anything a producer wrote, and are shown as text.
            ts: the record's timestamp (unix seconds), for the rate; default: the event's ts_out, else now.
            now: the current time (tests).
        """
        now = time.time() if now is None else now
        stream_id, event_id = fit_text(event.stream_id) or "?", fit_text(event.event_id)
        known = self.streams.get(stream_id)
        if known is not None and event_id is not None and any(t["event_id"] == event_id for t in known["timeline"]):
            # A repeat: a worker answers a re-delivered event with the very same record, and the view
            # reads a stretch again after reconnecting. Consumers drop repeats by event_id.
            self.totals["repeats"] += 1
            return
        card = self.streams.pop(stream_id, None)
        if card is None:
            card = {"stream_id": stream_id, "label": None, "labels": 0, "changes": 0,
                    "timeline": deque(maxlen=self.timeline)}
            while len(self.streams) >= self.max_streams:
                self.streams.popitem(last=False)
                self.streams_dropped += 1
        self.streams[stream_id] = card
        label, ts_out = fit_text(event.label), _number(event.ts_out)
        # Records of versions before `changed` existed: a change is a label unlike the one before.
        changed = bool(event.changed) if event.changed is not None else label != card["label"]
        entry = {"event_id": event_id, "label": label, "raw_label": fit_text(event.raw_label),
                 "score": _number(event.score), "changed": changed, "ts_out": ts_out}
        card["timeline"].append(entry)
        candidates = []
        for item in event.candidates[:MAX_CANDIDATES] if isinstance(event.candidates, list) else ():
            if isinstance(item, (list, tuple)) and len(item) >= 2:
                candidates.append([fit_text(item[0]), _number(item[1])])
        card.update(entry, concept=fit_text(event.concept), candidates=candidates, ts_in=_number(event.ts_in),
                    labels=card["labels"] + 1, changes=card["changes"] + changed)
        self.totals["labels"] += 1
        self.rates["labels"].add(ts or ts_out or now, now)

    def add_dead_letter(self, letter: ev.DeadLetter, ts: float | None = None, now: float | None = None) -> None:
        """One images.dlq record (`ts`, `now` as for add_label)."""
        now = time.time() if now is None else now
        reason = fit_text(letter.reason, 64) or "?"
        if reason not in self.reasons and len(self.reasons) >= self.max_reasons:
            reason = OTHER_REASON
        kept = self.reasons.setdefault(reason, {"count": 0, "recent": deque(maxlen=self.letters_per_reason)})
        event_id = fit_text(letter.event_id)
        if event_id is not None and any(d["event_id"] == event_id for d in kept["recent"]):
            self.totals["repeats"] += 1  # as for labels
            return
        kept["count"] += 1
        size = letter.payload_size
        kept["recent"].appendleft({
            "event_id": event_id, "stream_id": fit_text(letter.stream_id),
            "detail": fit_text(letter.detail, MAX_DETAIL),
            "payload_size": size if isinstance(size, int) and not isinstance(size, bool) else None,
            "truncated": letter.truncated is True, "ts": _number(ts) or now})
        self.totals["dead_letters"] += 1
        self.rates["dead_letters"].add(ts or now, now)

    def count_image(self, ts: float | None = None, now: float | None = None) -> None:
        """One images.in record."""
        now = time.time() if now is None else now
        self.totals["images_in"] += 1
        self.rates["images_in"].add(ts or now, now)

    def set_thumbnail(self, stream_id: str, event_id: str | None, jpeg: bytes) -> None:
        """The latest frame of `stream_id`, a JPEG this process made (see make_thumbnail)."""
        stream_id = fit_text(stream_id) or "?"
        self._serial += 1
        self.thumbnails.pop(stream_id, None)
        self.thumbnails[stream_id] = (fit_text(event_id), jpeg, self._serial)
        while len(self.thumbnails) > self.max_streams:
            self.thumbnails.popitem(last=False)

    def thumbnail(self, stream_id: str) -> bytes | None:
        kept = self.thumbnails.get(stream_id)
        return None if kept is None else kept[1]

    def set_lag(self, rows: list[tuple[int, int | None, int | None, int | None]], error: str | None = None) -> None:
        """The group's lag: one (partition, end, committed, beginning) row per images.in partition (see
        partition_lag); `error` when it could not be read (the rows are then kept from before)."""
        if error is not None:
            self.lag["error"] = fit_text(error)
            return
        partitions = [{"partition": p, "end": end, "committed": committed if committed is not None and committed >= 0
                       else None, "lag": partition_lag(end, committed, beginning)}
                      for p, end, committed, beginning in sorted(rows)]
        known = [row["lag"] for row in partitions if row["lag"] is not None]
        self.lag = {**self.lag, "partitions": partitions, "total": sum(known) if known else None, "error": None}

    def set_worker(self, url: str, status: dict[str, Any] | None = None, error: str | None = None) -> None:
        """What the worker at `url` said on /status (ready, live, which dependencies it is paused on),
        or `error` when it could not be asked. Only the fields shown are kept, each bounded."""
        if url not in self.workers and len(self.workers) >= MAX_WORKERS:
            return
        if status is None:
            self.workers[url] = {"url": fit_text(url), "error": fit_text(error or "no answer")}
            return
        paused = status.get("paused") if isinstance(status.get("paused"), dict) else {}
        self.workers[url] = {
            "url": fit_text(url), "error": None, "ready": bool(status.get("ready")), "live": bool(status.get("live")),
            "halted": fit_text(status.get("halted")), "model_batch_size": _number(status.get("model_batch_size")),
            "paused": [{"dependency": fit_text(name), "since": _number(o.get("since")),
                        "seconds": _number(o.get("seconds")), "detail": fit_text(o.get("detail"), MAX_DETAIL)}
                       for name, o in sorted(paused.items())[:MAX_WORKERS] if isinstance(o, dict)]}

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """The whole view, as the page gets it: JSON-serialisable, streams and reasons sorted by name."""
        now = time.time() if now is None else now
        streams = []
        for stream_id in sorted(self.streams):
            card = self.streams[stream_id]
            thumb = self.thumbnails.get(stream_id)
            streams.append({**{k: v for k, v in card.items() if k != "timeline"},
                            "timeline": list(card["timeline"]),
                            "thumbnail": None if thumb is None else {"version": thumb[2], "event_id": thumb[0]}})
        letters = [{"reason": reason, "count": kept["count"], "recent": list(kept["recent"])}
                   for reason, kept in sorted(self.reasons.items())]
        return {"streams": streams, "streams_dropped": self.streams_dropped, "dead_letters": letters,
                "rates": {name: round(rate.rate(now), 2) for name, rate in self.rates.items()},
                "totals": dict(self.totals), "lag": self.lag, "kafka_error": self.kafka_error,
                "thumbnails": self.thumbnails_mode,
                "workers": [self.workers[url] for url in sorted(self.workers)]}
