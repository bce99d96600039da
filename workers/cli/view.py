"""`cased view`: a live web page of the streams, following labels.out, images.dlq and images.in.

One card per stream (its consistent label, raw label and score, the recent label timeline with the
changes marked, a thumbnail of its latest frame), dead letters by reason with their detail, events per
second, the worker group's lag on each images.in partition, and, for the workers it is given, whether
each is ready or paused by a dependency's outage (their /status, asked every WORKER_INTERVAL_S). A small aiohttp server pushes the
whole view as a JSON snapshot over server-sent events; the page (`view.html`, one file shipped as
package data, no external resources) builds its DOM with textContent only, never innerHTML, so no
string a producer wrote is ever parsed as markup.

`workers.cli.view_state.ViewState` holds the view and is pure logic (no I/O), bounded whatever the
topics hold; a record whose event_id is already shown is a repeat, shown once. `ViewServer` runs the Kafka consumer (no consumer group: it reads, never commits), the thumbnailer
and the web server on one event loop; `serve` runs one until cancelled (`cased view`), `ViewThread`
runs one beside synchronous code (`cased demo`).

Thumbnails are made only from what can be had safely: inline frames, decoded with the worker's
bounded decoder (`workers.decode.decode_image`: pixel count checked from the header, containers
bounded), re-encoded as a small JPEG, so the browser only ever gets images this process wrote.
`s3://`, `http(s)://` and `file://` frames are fetched only with `fetch_thumbnails`, through the
worker's guarded fetcher with the worker's limits (`Settings.fetch_limits`): the same buckets,
file root, address policy, byte limit and timeouts.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import ipaddress
import json
import logging
import math
import re
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Callable, Sequence

from topics import events as ev
from workers.settings import Settings
from workers.cli.view_state import MAX_DETAIL, ViewState, fit_text

if TYPE_CHECKING:
    from workers.decode import ImageLimits
    from workers.fetch import Fetcher

log = logging.getLogger("cased.view")

DEFAULT_PORT = 6067  # next to the worker's 6066
THUMB_SIDE = 160  # pixels, the thumbnail's longer side
THUMB_INTERVAL_S = 0.5  # at most one thumbnail per stream this often: frames between are skipped
PUSH_INTERVAL_S = 0.5  # a viewer gets a snapshot at most this often, and only when it changed
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
MAX_VIEWERS = 32  # concurrent /events streams; more are refused with 503
LAG_INTERVAL_S = 1.0
WORKER_INTERVAL_S = 2.0  # how often each given worker's /status is asked
REFRESH_S = 30.0  # how often the topics' partitions are looked up again (1 s while one is missing)
# Records read back per partition when the view starts, so that it does not open empty.
BACKLOG = {"labels": 200, "dead_letters": 200, "images": 20}


def _error(err: BaseException) -> str:
    """An exception in one line, its type named once (aiokafka's messages start with it already)."""
    text, kind = " ".join(str(err).split()), type(err).__name__
    return text if text.startswith(kind) else f"{kind}: {text}" if text else kind


def _host_name(header: str) -> str:
    """The name or address in a Host header, without its port or an IPv6 address's brackets."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, no port) is this machine's loopback."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_thumbnail(data: bytes, limits: ImageLimits, side: int = THUMB_SIDE) -> bytes:
    """A small JPEG of an image from a producer, decoded the way the worker decodes: the pixel count
    is checked from the header before any decoding, containers are bounded, a JPEG is decoded at the
    DCT scale that covers `side`, and an image longer than 2:1 becomes the square the model sees.

    Raises:
        workers.decode.DecodeError: the bytes are not an image the worker would decode.
    """
    from workers.decode import decode_image

    image = decode_image(data, limits, input_size=side)
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=75)
    return out.getvalue()


@dataclass(frozen=True)
class Page:
    """The page and its Content-Security-Policy: the inline script and style are allowed by their
    SHA-256, nothing else runs and nothing is loaded from elsewhere."""

    html: bytes
    csp: str

    @classmethod
    def load(cls) -> "Page":
        html = resources.files("workers.cli").joinpath("view.html").read_text(encoding="utf-8")

        def hashes(tag: str) -> str:
            bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
            return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
                            for b in bodies) or "'none'"

        csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
               "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        return cls(html.encode(), csp)


class ViewServer:
    """The Kafka reader, the thumbnailer and the web server of one view, on one event loop.

    Routes: `GET /` the page; `GET /events` server-sent events, each a JSON snapshot (ViewState.snapshot)
    sent when it changed, at most every PUSH_INTERVAL_S; `GET /snapshot` the same once; `GET
    /thumb?stream=<stream_id>` (or `/thumb/<stream_id>`) the stream's latest thumbnail (JPEG); `GET
    /healthz` 200 while the Kafka reader is connected, else 503, with its last error. Listening on
    loopback, it answers only requests whose Host is a loopback address or localhost.

    Args:
        settings: broker, topics, group (app_id), Kafka security (CASED_KAFKA_*, as every client here),
            and, with fetch_thumbnails, the worker's fetch limits (CASED_S3_BUCKETS, CASED_FILE_ROOT,
            CASED_ALLOW_PRIVATE_HOSTS, CASED_MAX_BYTES, ...).
        host, port: where to listen; port 0 picks a free one (see `url` once started).
        fetch_thumbnails: also fetch uri frames (s3, http(s), file) for thumbnails.
        fetcher: the fetcher to use for them (default: one with the worker's limits).
        state: the state to fill (default: a new one).
        workers: web addresses of workers (http://HOST:PORT) whose /status the page shows: ready, or
            paused on which dependency since when.
    """

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 fetch_thumbnails: bool = False, fetcher: Fetcher | None = None, state: ViewState | None = None,
                 workers: Sequence[str] = ()):
        self.settings, self.host, self.port = settings, host, port
        self.fetch_thumbnails = fetch_thumbnails
        self.state = state or ViewState()
        self.state.thumbnails_mode = "inline and fetched" if fetch_thumbnails else "inline"
        self.state.lag.update(group=settings.app_id, topic=settings.images_topic)
        self.url: str | None = None
        self._fetcher = fetcher
        self._limits = settings.image_limits()
        self._pending: OrderedDict[str, ev.ImageEvent] = OrderedDict()  # latest frame per stream, to thumbnail
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._runner = None
        self._viewers = 0
        self._snapshot: tuple[float, str] = (-math.inf, "")
        self._page: Page | None = None
        self.reading = False  # the Kafka reader is connected
        self.workers = [url.rstrip("/") for url in workers]

    # -- records -------------------------------------------------------------------------------------

    def handle_record(self, topic: str, value: bytes | None, timestamp_ms: int | None = None) -> None:
        """One record of a followed topic into the state; a record that does not decode is counted as
        unreadable, never raised: one bad record must not stop the view."""
        ts = timestamp_ms / 1000 if timestamp_ms and timestamp_ms > 0 else None
        try:
            if topic == self.settings.labels_topic:
                self.state.add_label(ev.decode_label_event(value), ts)
            elif topic == self.settings.dead_letter_topic:
                self.state.add_dead_letter(ev.decode_dead_letter(value), ts)
            elif topic == self.settings.images_topic:
                self.state.count_image(ts)
                self._queue_thumbnail(ev.decode_image_event(value))
        except Exception:  # msgpack, the dataclasses and the contract's checks raise several types
            self.state.totals["unreadable"] += 1

    def _queue_thumbnail(self, event: ev.ImageEvent) -> None:
        if event.image is None and not self.fetch_thumbnails:
            return
        # Only each stream's latest frame waits: a fast camera costs one decode per THUMB_INTERVAL_S.
        self._pending.pop(event.stream_id, None)
        self._pending[event.stream_id] = event
        while len(self._pending) > self.state.max_streams:
            self._pending.popitem(last=False)
        self._wake.set()

    async def thumbnail_of(self, event: ev.ImageEvent) -> bytes | None:
        """A thumbnail of the event's frame, or None when it cannot be had safely (not inline and not
        allowed to fetch, refused or failed by the fetcher, over the byte limit, not an image)."""
        from workers.decode import DecodeError
        from workers.fetch import FetchError

        try:
            if event.image is not None:
                data = event.image
            elif self.fetch_thumbnails:
                data = await self._guarded_fetcher().fetch(event)
            else:
                return None
            if len(data) > self.settings.max_bytes:
                return None
            return await asyncio.to_thread(make_thumbnail, data, self._limits)
        except (FetchError, DecodeError) as err:
            log.debug("no thumbnail for %s: %s", event.event_id, err)
        except Exception:  # a decoder failing in a way nothing foresaw: no thumbnail, the view goes on
            log.warning("no thumbnail for %s", event.event_id, exc_info=True)
        self.state.totals["thumbnail_failures"] += 1
        return None

    def _guarded_fetcher(self) -> Fetcher:
        if self._fetcher is None:
            from workers.fetch import Fetcher

            self._fetcher = Fetcher(self.settings.fetch_limits())
        return self._fetcher

    async def _thumbnails(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:  # one at a time: the view holds at most one decode (see make_thumbnail)
                stream_id, event = self._pending.popitem(last=False)
                jpeg = await self.thumbnail_of(event)
                if jpeg is not None:
                    self.state.set_thumbnail(stream_id, event.event_id, jpeg)
            await asyncio.sleep(THUMB_INTERVAL_S)  # a throttle: frames arriving meanwhile coalesce

    # -- Kafka ---------------------------------------------------------------------------------------

    def _clients(self):
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        from workers.clients import bootstrap
        from workers.security import aiokafka_options

        servers, options = bootstrap(self.settings.broker), aiokafka_options(self.settings)
        # No group: the view reads and never commits, so it cannot disturb the workers' group.
        consumer = AIOKafkaConsumer(bootstrap_servers=servers, client_id="cased-view", group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=200,
                                    **options)
        admin = AIOKafkaAdminClient(bootstrap_servers=servers, client_id="cased-view-admin", **options)
        return consumer, admin

    async def _read(self) -> None:
        """Follows the topics until cancelled; a lost or refused connection is shown on the page and
        retried with backoff (up to 10 s)."""
        backoff = 1.0
        while True:
            consumer, admin = self._clients()
            try:
                await consumer.start()
                await admin.start()
                if self.state.kafka_error is not None:
                    log.info("reading Kafka at %s again", self.settings.broker)
                self.state.kafka_error, self.reading, backoff = None, True, 1.0
                await self._follow(consumer, admin)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # aiokafka's errors, OSError, TLS errors: retried, never fatal
                error = fit_text(_error(err), MAX_DETAIL)
                if error != self.state.kafka_error:  # once, not at every retry: the page shows it meanwhile
                    log.warning("reading Kafka at %s failed: %s; retrying", self.settings.broker, error)
                self.state.kafka_error = error
            finally:
                self.reading = False
                await asyncio.shield(self._close(consumer, admin))
            await asyncio.sleep(backoff)
            backoff = min(10.0, backoff * 2)

    @staticmethod
    async def _close(consumer, admin) -> None:
        for close in (consumer.stop, admin.close):
            try:
                await close()
            except Exception:  # a client that never started: nothing to close
                pass

    async def _follow(self, consumer, admin) -> None:
        from aiokafka import TopicPartition

        topics = {self.settings.labels_topic: BACKLOG["labels"],
                  self.settings.dead_letter_topic: BACKLOG["dead_letters"],
                  self.settings.images_topic: BACKLOG["images"]}
        images: list[TopicPartition] = []
        next_refresh = next_lag = 0.0
        while True:
            now = time.monotonic()
            if now >= next_refresh:
                found = await self._partitions(admin, list(topics))
                new = [TopicPartition(t, p) for t, ps in found.items() for p in ps
                       if TopicPartition(t, p) not in consumer.assignment()]
                if new:
                    await self._assign(consumer, new, topics)
                images = sorted(tp for tp in consumer.assignment() if tp.topic == self.settings.images_topic)
                next_refresh = now + (REFRESH_S if len(found) == len(topics) else 1.0)
            if now >= next_lag and images:
                await self._poll_lag(consumer, admin, images)
                next_lag = now + LAG_INTERVAL_S
            if not consumer.assignment():
                await asyncio.sleep(0.5)
                continue
            batches = await consumer.getmany(timeout_ms=250, max_records=1000)
            for tp, records in batches.items():
                for record in records:
                    self.handle_record(tp.topic, record.value, record.timestamp)

    @staticmethod
    async def _partitions(admin, names: list[str]) -> dict[str, list[int]]:
        # All topics' metadata, not the three by name: a metadata request naming a missing topic lets
        # brokers with auto.create.topics.enable create it, with the broker's partition count.
        found: dict[str, list[int]] = {}
        for topic in await admin.describe_topics():
            name = topic.get("topic", topic.get("name"))
            if name in names and not topic.get("error_code"):
                found[name] = sorted(p.get("partition", p.get("partition_index")) for p in topic["partitions"])
        return found

    @staticmethod
    async def _assign(consumer, new: list, backlog: dict[str, int]) -> None:
        # assign() replaces the assignment and forgets positions: keep those of the partitions read so far.
        positions = {tp: await consumer.position(tp) for tp in consumer.assignment()}
        consumer.assign(list(positions) + new)
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        beginnings, ends = await consumer.beginning_offsets(new), await consumer.end_offsets(new)
        for tp in new:
            consumer.seek(tp, max(beginnings[tp], ends[tp] - backlog[tp.topic]))

    async def _poll_lag(self, consumer, admin, images: list) -> None:
        async def rows():
            committed = await admin.list_consumer_group_offsets(self.settings.app_id, partitions=images)
            ends, beginnings = await consumer.end_offsets(images), await consumer.beginning_offsets(images)
            out = []
            for tp in images:
                # The embedded broker (Tansu) answers ListOffsets with one past the last record *batch*
                # (workers/offsets.py); the high watermark of this reader's fetches is exact. A real
                # Kafka gives both right, so the larger is right on both.
                end = max(ends.get(tp, 0), consumer.highwater(tp) or 0)
                offset = committed[tp].offset if tp in committed else None
                out.append((tp.partition, end, offset, beginnings.get(tp)))
            return out

        try:
            self.state.set_lag(await asyncio.wait_for(rows(), 5.0))
        except asyncio.CancelledError:
            raise
        except Exception as err:  # no coordinator yet, a timeout: the page shows "-" and why
            self.state.set_lag([], error=_error(err))

    async def _poll_workers(self) -> None:
        import aiohttp

        async def ask(session, url: str) -> None:
            try:
                async with session.get(f"{url}/status") as response:
                    self.state.set_worker(url, await response.json())
            except asyncio.CancelledError:
                raise
            except Exception as err:  # not up yet, gone, not a worker: the page says so
                self.state.set_worker(url, error=_error(err))

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WORKER_INTERVAL_S)) as session:
            while True:
                await asyncio.gather(*(ask(session, url) for url in self.workers))
                await asyncio.sleep(WORKER_INTERVAL_S)

    # -- web -----------------------------------------------------------------------------------------

    def _snapshot_json(self) -> str:
        # One snapshot per push interval whatever the number of viewers.
        at, body = self._snapshot
        if time.monotonic() - at >= PUSH_INTERVAL_S / 2:
            body = json.dumps(self.state.snapshot(), separators=(",", ":"))
            self._snapshot = (time.monotonic(), body)
        return body

    async def _index(self, request):
        from aiohttp import web

        if self._page is None:
            self._page = Page.load()
        return web.Response(body=self._page.html, content_type="text/html", charset="utf-8",
                            headers={"Content-Security-Policy": self._page.csp, "Cache-Control": "no-store",
                                     "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    async def _events(self, request):
        from aiohttp import web

        if self._viewers >= MAX_VIEWERS:
            raise web.HTTPServiceUnavailable(text=f"more than {MAX_VIEWERS} viewers")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})  # nginx: do not buffer the stream
        await response.prepare(request)
        self._viewers += 1
        try:
            sent, sent_at = None, time.monotonic()
            while not self._closing.is_set():
                body = self._snapshot_json()
                if body != sent:
                    # json.dumps escapes newlines inside strings: one data line, one SSE event
                    await response.write(f"data: {body}\n\n".encode())
                    sent, sent_at = body, time.monotonic()
                elif time.monotonic() - sent_at >= KEEPALIVE_S:
                    await response.write(b": keepalive\n\n")
                    sent_at = time.monotonic()
                try:
                    await asyncio.wait_for(self._closing.wait(), PUSH_INTERVAL_S)
                except asyncio.TimeoutError:
                    pass
        except ConnectionError:  # the viewer went away
            pass
        finally:
            self._viewers -= 1
        return response

    async def _snapshot_route(self, request):
        from aiohttp import web

        return web.Response(text=self._snapshot_json(), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def _thumb(self, request):
        from aiohttp import web

        # /thumb?stream=ID from the page (a stream named "." or ".." cannot be a path segment: browsers
        # resolve it, even percent-encoded), /thumb/ID for people
        stream_id = request.match_info.get("stream", request.query.get("stream", ""))
        jpeg = self.state.thumbnail(stream_id)
        if jpeg is None:
            raise web.HTTPNotFound(text="no thumbnail for this stream")
        return web.Response(body=jpeg, content_type="image/jpeg",
                            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    async def _healthz(self, request):
        from aiohttp import web

        return web.json_response({"reading": self.reading, "kafka_error": self.state.kafka_error,
                                  "viewers": self._viewers}, status=200 if self.reading else 503)

    async def _no_icon(self, request):
        from aiohttp import web

        return web.Response(status=204)  # browsers ask; a 404 would be logged as an error on the page

    def _bind(self) -> socket.socket:
        family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        return socket.create_server((self.host, self.port), family=family)

    async def start(self) -> str:
        """Listens, starts reading Kafka and thumbnailing; returns the page's URL.

        Raises:
            OSError: the address cannot be listened on (in use, not local).
        """
        from aiohttp import web

        self._page = Page.load()  # a broken package fails now, not on the first visit
        @web.middleware
        async def loopback_names_only(request, handler):
            # On loopback (the default), a request naming any other host is refused: a web page the
            # operator visits could otherwise point a DNS name of its own at 127.0.0.1 (DNS rebinding)
            # and read the view through the operator's browser.
            if not _is_loopback(_host_name(request.host or "")):
                raise web.HTTPForbidden(text="this view answers requests for a loopback address or localhost only")
            return await handler(request)

        app = web.Application(middlewares=[loopback_names_only] if _is_loopback(self.host) else [])
        app.router.add_get("/", self._index)
        app.router.add_get("/events", self._events)
        app.router.add_get("/snapshot", self._snapshot_route)
        app.router.add_get("/thumb", self._thumb)
        app.router.add_get("/thumb/{stream:.+}", self._thumb)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/favicon.ico", self._no_icon)
        # Our own socket: with port 0 the free port is known at once, and there is no race to find one.
        sock = self._bind()
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self._tasks = [asyncio.create_task(self._read(), name="cased-view-read"),
                       asyncio.create_task(self._thumbnails(), name="cased-view-thumbnails")]
        if self.workers:
            self._tasks.append(asyncio.create_task(self._poll_workers(), name="cased-view-workers"))
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}/"
        return self.url

    async def stop(self) -> None:
        """Ends the viewers' streams, the reader and the thumbnailer, and closes the server."""
        self._closing.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._fetcher is not None:
            await self._fetcher.close()


async def serve(settings: Settings, host: str = "127.0.0.1", port: int = DEFAULT_PORT, fetch_thumbnails: bool = False,
                announce: Callable[[str], None] = lambda url: print(f"live view: {url}", flush=True),
                workers: Sequence[str] = ()) -> None:
    """Runs a view until cancelled (Ctrl-C under asyncio.run).

    Args:
        settings: see ViewServer.
        host, port: where to listen (the page shows stream data: loopback unless asked).
        fetch_thumbnails: also fetch uri frames for thumbnails, through the worker's guarded fetcher.
        announce: called with the page's URL once it listens.
        workers: web addresses of workers whose /status the page shows.

    Raises:
        OSError: the address cannot be listened on.
    """
    server = ViewServer(settings, host, port, fetch_thumbnails, workers=workers)
    try:
        announce(await server.start())
        await asyncio.Event().wait()
    finally:
        await server.stop()


class ViewThread:
    """A ViewServer on its own event loop in a daemon thread, for synchronous callers (`cased demo`).

    Args:
        settings, host, port, **options: as ViewServer's.
    """

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 0, **options):
        self._args, self._options = (settings, host, port), options
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cased-view", daemon=True)
        self.server: ViewServer | None = None

    def start(self, timeout_s: float = 30.0) -> str:
        """Starts the thread and the server; returns the page's URL.

        Raises:
            OSError: the address cannot be listened on.
        """
        async def start() -> str:
            self.server = ViewServer(*self._args, **self._options)
            return await self.server.start()

        self._thread.start()
        try:
            return asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 15.0) -> None:
        if self._loop.is_closed():
            return
        if self.server is not None and self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout_s)
                # What the Kafka clients left running (a connection's reader, when stopped while starting):
                # cancelled and awaited, as asyncio.run does, rather than destroyed pending with the loop.
                asyncio.run_coroutine_threadsafe(_cancel_others(), self._loop).result(timeout_s)
            except Exception:
                log.warning("the live view did not stop cleanly", exc_info=True)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._loop.close()


async def _cancel_others() -> None:
    """Cancel every other task of the running loop and wait for them to end."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
