"""The fetcher against real servers on loopback: aiohttp.web for HTTP, moto for S3, temp files for file://.

An autouse net keeps every test on loopback whatever the fetcher does: a connection to any other
address is refused and fails the test, and no name goes to DNS (localhost and a few fake names get
loopback answers, anything else is parsed as a numeric address only).
"""
from __future__ import annotations

import asyncio
import errno
import gzip
import ipaddress
import os
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from urllib.parse import quote

import pytest
from aiohttp import web

from topics.events import (
    FETCH_FAILED, FORBIDDEN_SOURCE, NOT_FOUND, TIMEOUT, TOO_LARGE, UNSUPPORTED_SOURCE, ImageEvent,
)
from workers.cli.broker import free_port
from workers.failures import STORAGE, SystemFault
from workers.fetch import FetchError, Fetcher, FetchLimits, default_policy, permitted

PAYLOAD = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
LIMITS = FetchLimits(max_bytes=2000, timeout_s=0.5, retries=2, backoff_s=0.01)
FAKE_DNS = {"localhost": "127.0.0.1", "public.test": "127.0.0.1", "private.test": "127.0.0.2"}


def only_127_0_0_1(ip) -> bool:
    """An address policy under which a server on 127.0.0.1 is reachable and one on 127.0.0.2 is not."""
    return ip == ipaddress.IPv4Address("127.0.0.1")


def _local(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified  # connecting to 0.0.0.0 or :: reaches this host


@dataclass
class Net:
    connects: list = field(default_factory=list)  # (address, port) of every TCP connection attempt
    outside: list = field(default_factory=list)

    def reached(self, port: int, address: str | None = None) -> list:
        return [c for c in self.connects if c[1] == port and address in (None, c[0])]


@pytest.fixture(autouse=True)
def net(monkeypatch):
    state = Net()
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            state.connects.append((address[0], address[1]))
            if not _local(address[0]):
                state.outside.append(address)
                raise OSError(errno.ENETUNREACH, "the test net reaches loopback only")
        return real_connect(sock, address)

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        fake = FAKE_DNS.get((name or "").rstrip(".").lower())
        if fake is not None:
            return real_getaddrinfo(fake, port, family, type, proto, flags)
        return real_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield state
    assert state.outside == [], "the fetcher tried to leave loopback"


@dataclass
class Seen:
    address: str  # the server address the request reached
    path: str
    headers: dict
    at: float


class Server:
    """aiohttp.web on one free port of several loopback addresses, in a thread with its own loop.

    Paths: /img, /to?l=LOCATION&code=302, /loop, /chain/N (relative hops), /sleepy/N (0.2 s a hop),
    /status/CODE, /flaky/CODE/FAILS (CODE for the first FAILS requests), /bytes/N (with
    Content-Length), /chunked/N (without), /endless, /slow, /gzip."""

    def __init__(self, *addresses: str):
        self.addresses, self.port, self.seen = addresses, free_port(), []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Server:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        for address in self.addresses:
            await web.TCPSite(self._runner, address, self.port).start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def requests(self, address: str | None = None) -> list[Seen]:
        return [s for s in self.seen if address in (None, s.address)]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.transport.get_extra_info("sockname")[0], request.path_qs,
                              dict(request.headers), time.monotonic()))
        route, *args = request.path.strip("/").split("/")
        if route == "img":
            return web.Response(body=PAYLOAD)
        if route == "to":
            return web.Response(status=int(request.query.get("code", "302")),
                                headers={"Location": request.query["l"]})
        if route == "loop":
            return web.Response(status=302, headers={"Location": "/loop"})
        if route in ("chain", "sleepy"):
            if route == "sleepy":
                await asyncio.sleep(0.2)
            left = int(args[0])
            return web.Response(status=302, headers={"Location": f"{left - 1}"}) if left else web.Response(body=PAYLOAD)
        if route == "status":
            return web.Response(status=int(args[0]))
        if route == "flaky":
            count = sum(s.path == request.path_qs for s in self.seen)
            return web.Response(status=int(args[0])) if count <= int(args[1]) else web.Response(body=PAYLOAD)
        if route == "bytes":
            return web.Response(body=bytes(int(args[0])))
        if route == "gzip":
            return web.Response(body=gzip.compress(bytes(1_000_000)), headers={"Content-Encoding": "gzip"})
        if route in ("chunked", "endless", "slow"):
            return await self._stream(request, route, int(args[0]) if args else 0)
        return web.Response(status=404)

    @staticmethod
    async def _stream(request: web.Request, route: str, size: int) -> web.StreamResponse:
        """A body without Content-Length: `size` bytes (chunked), 8 MiB then a stall (endless), or a
        byte every 50 ms (slow); the last two end after 5 s or when the client leaves."""
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        if route == "chunked":
            for start in range(0, size, 100):
                await response.write(bytes(min(100, size - start)))
            await response.write_eof()
            return response
        sent, deadline = 0, time.monotonic() + 5
        try:
            while time.monotonic() < deadline and request.transport and not request.transport.is_closing():
                if route == "slow":
                    await response.write(b"x")
                    await asyncio.sleep(0.05)
                elif sent < 8 << 20:
                    await response.write(bytes(8192))
                    sent += 8192
                else:
                    await asyncio.sleep(0.05)  # the stall: a client reading to the end times out
        except ConnectionError:
            pass  # the client left, as it should
        return response


@pytest.fixture
def server():
    """127.0.0.1, ::1 and 127.0.0.2 on one port: the first two are what loopback forms reach, the
    last is what `only_127_0_0_1` forbids."""
    with Server("127.0.0.1", "::1", "127.0.0.2") as running:
        yield running


def fetch(uri: str | None, limits: FetchLimits = LIMITS, **kwargs) -> bytes:
    async def run() -> bytes:
        fetcher = Fetcher(limits, **kwargs)
        try:
            return await fetcher.fetch(ImageEvent("event", "stream", uri=uri))
        finally:
            await fetcher.close()

    return asyncio.run(run())


def fetch_error(uri: str | None, limits: FetchLimits = LIMITS, **kwargs) -> FetchError:
    # Anything but a FetchError escapes pytest.raises and fails the test.
    with pytest.raises(FetchError) as caught:
        fetch(uri, limits, **kwargs)
    return caught.value


# --- the address guard ---------------------------------------------------------------------------

LOOPBACK_FORMS = [
    "127.0.0.1", "127.0.0.1.", "127.0.0.1..", "0.0.0.0", "0", "[::1]", "[::]", "[0:0:0:0:0:0:0:1]",
    # Unicode forms that URL normalisation turns into 127.0.0.1.
    "１２７.０.０.１", "127。0。0。1", "127．0．0．1", "127｡0｡0｡1", "¹²⁷.0.0.1",
    # Legacy IPv4 spellings that inet_aton, getaddrinfo and older aiohttp accept.
    "2130706433", "0x7f000001", "0X7F000001", "017700000001", "0177.0.0.1", "0177.0.0.01", "127.1", "127.0.1",
    "0x7f.1", "0x7f.0.0.1", "127.000.000.001", "2130706433.",
    # IPv6 forms that carry 127.0.0.1.
    "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::FFFF:7F00:1]", "[0:0:0:0:0:ffff:127.0.0.1]",
    "[::127.0.0.1]", "[::ffff:0:7f00:1]", "[64:ff9b::7f00:1]", "[64:ff9b::127.0.0.1]", "[2002:7f00:1::]",
    "[64:ff9b:1::7f00:1]", "[::1%25lo]", "[::1%lo]", "[fe80::1%25lo]",
    # Userinfo that looks like a host, names of loopback, in any case.
    "example.com@127.0.0.1", "user:pw@[::1]", "localhost", "LOCALHOST", "localhost.", "LocalHost.",
    "ⓛⓞⓒⓐⓛⓗⓞⓢⓣ", "ＬＯＣＡＬＨＯＳＴ",
]
# Not loopback: the net refuses them should the guard let one through.
PRIVATE_FORMS = ["10.0.0.1", "169.254.169.254", "0xa9fea9fe", "2852039166", "192.168.0.1", "172.16.0.1",
                 "100.64.0.1", "224.0.0.1", "255.255.255.255", "[fd00:ec2::254]", "[fe80::1%25eth0]",
                 "[ff02::1]", "[64:ff9b::a9fe:a9fe]", "[2002:a9fe:a9fe::]", "[::ffff:169.254.169.254]",
                 "[2001:0:4136:e378:8000:63bf:3fff:fdd2]"]


@pytest.mark.parametrize("host", LOOPBACK_FORMS + PRIVATE_FORMS)
def test_guard_refuses_every_form_of_a_forbidden_host(server, net, host):
    err = fetch_error(f"http://{host}:{server.port}/img")
    assert (err.reason, err.transient) == (FORBIDDEN_SOURCE, False), err
    assert server.seen == [] and net.reached(server.port) == []


def test_guard_applies_to_https_and_upper_case_schemes(server, net):
    for uri in (server.url("/img").replace("http:", "https:"), server.url("/img").replace("http:", "HTTP:")):
        assert fetch_error(uri).reason == FORBIDDEN_SOURCE
    assert net.reached(server.port) == []


@pytest.mark.parametrize("host", ["127.0.0.1", "１２７.０.０.１", "127。0。0。1", "2130706433", "0177.0.0.1",
                                  "127.1", "0x7f.1", "[::ffff:127.0.0.1]", "localhost", "public.test"])
def test_allowed_host_is_reached_at_the_address_that_was_checked(server, host):
    # 127.1 and friends are requested as 127.0.0.1 (aiohttp >= 3.14 would refuse the raw form).
    assert fetch(f"http://{host}:{server.port}/img", allow_address=only_127_0_0_1) == PAYLOAD
    assert [s.address for s in server.seen] == ["127.0.0.1"]


@pytest.mark.parametrize("host", ["127.0.0.2", "１２７.０.０.２", "2130706434", "127.2", "0x7f000002",
                                  "[::ffff:127.0.0.2]", "private.test"])
def test_custom_policy_refuses_the_other_loopback_address(server, net, host):
    err = fetch_error(f"http://{host}:{server.port}/img", allow_address=only_127_0_0_1)
    assert err.reason == FORBIDDEN_SOURCE, err
    assert server.seen == [] and net.reached(server.port) == []


def test_allow_private_reaches_loopback(server):
    limits = replace(LIMITS, allow_private=True)
    assert fetch(server.url("/img"), limits) == PAYLOAD
    assert fetch(f"http://127.1:{server.port}/img", limits) == PAYLOAD
    assert fetch(f"http://[::1]:{server.port}/img", limits) == PAYLOAD
    assert [s.address for s in server.seen] == ["127.0.0.1", "127.0.0.1", "::1"]


@pytest.mark.parametrize("address, allowed", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("::ffff:8.8.8.8", True), ("64:ff9b::808:808", True),
    ("2002:808:808::", True), ("127.0.0.1", False), ("::1", False), ("::", False), ("0.0.0.0", False),
    ("::ffff:127.0.0.1", False), ("::7f00:1", False), ("::ffff:0:7f00:1", False), ("64:ff9b::a00:1", False),
    ("64:ff9b:1::808:808", False), ("2002:c0a8:1::", False), ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),
    ("169.254.169.254", False), ("fd00:ec2::254", False), ("fe80::1%eth0", False), ("224.0.0.1", False),
    ("ff0e::1", False), ("100.64.0.1", False),
])
def test_the_address_policy(address, allowed):
    ip = ipaddress.ip_address(address)
    assert permitted(ip, default_policy(allow_private=False)) is allowed
    assert permitted(ip, default_policy(allow_private=True)) is True


# --- redirects -----------------------------------------------------------------------------------

def redirect(server: Server, location: str, code: int = 302) -> str:
    return server.url(f"/to?code={code}&l={quote(location, safe='')}")


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("location", ["img", "../img", "/img", "//127.0.0.1:{port}/img", "http://127.0.0.1:{port}/img",
                                      "http://１２７.０.０.１:{port}/img", "HTTP://localhost:{port}/img",
                                      "http:///img", "http:img"])
def test_redirect_locations_are_followed(server, code, location):
    uri = redirect(server, location.format(port=server.port), code)
    assert fetch(uri, allow_address=only_127_0_0_1) == PAYLOAD
    assert [s.path for s in server.seen][-1] == "/img" and len(server.seen) == 2


@pytest.mark.parametrize("location", ["http://127.0.0.2:{port}/img", "//127.0.0.2:{port}/img",
                                      "http://１２７.０.０.２:{port}/img", "http://2130706434:{port}/img",
                                      "http://127.2:{port}/img", "http://[::ffff:127.0.0.2]:{port}/img",
                                      "http://private.test:{port}/img", "http://[::1]:{port}/img"])
def test_redirect_to_a_forbidden_host_is_refused(server, net, location):
    err = fetch_error(redirect(server, location.format(port=server.port)), allow_address=only_127_0_0_1)
    assert (err.reason, err.transient) == (FORBIDDEN_SOURCE, False), err
    assert len(server.seen) == 1 and server.requests("127.0.0.2") == server.requests("::1") == []
    assert net.reached(server.port, "127.0.0.2") == net.reached(server.port, "::1") == []


def test_every_hop_is_checked(server, net):
    # 127.0.0.1 -> 127.0.0.1 (allowed) -> 127.0.0.2 (refused)
    second = f"http://127.0.0.1:{server.port}/to?l={quote(server.url('/img', '127.0.0.2'), safe='')}"
    err = fetch_error(redirect(server, second), allow_address=only_127_0_0_1)
    assert err.reason == FORBIDDEN_SOURCE
    assert [s.address for s in server.seen] == ["127.0.0.1", "127.0.0.1"]
    assert net.reached(server.port, "127.0.0.2") == []


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1:{port}/img", "gopher://127.0.0.1:{port}/",
                                      "data:image/png;base64,iVBORw0KGgo=", "javascript:alert(1)",
                                      "s3://bucket/key"])
def test_redirect_to_another_scheme_is_refused(server, location):
    err = fetch_error(redirect(server, location.format(port=server.port)), allow_address=only_127_0_0_1)
    assert (err.reason, err.transient) == (FORBIDDEN_SOURCE, False), err
    assert len(server.seen) == 1


@pytest.mark.parametrize("location", ["http://[::1", "http://127.0.0.1:99999/", "http://exa mple.com/",
                                      "http://xn--/", "http://%31%32%37.0.0.1/"])
def test_redirect_to_a_bad_location_fails_without_retry(server, location):
    err = fetch_error(redirect(server, location), allow_address=only_127_0_0_1)
    assert err.reason in (FETCH_FAILED, UNSUPPORTED_SOURCE) and not err.transient, err
    assert len(server.seen) == 1


def test_backslashes_in_a_location_stay_in_the_path(server, net):
    # yarl and aiohttp read "/\\host" as a path, where a browser would read a host
    err = fetch_error(redirect(server, f"/\\127.0.0.2:{server.port}/img"), allow_address=only_127_0_0_1)
    assert err.reason == NOT_FOUND
    assert [s.address for s in server.seen] == ["127.0.0.1", "127.0.0.1"]


def test_redirect_loop_and_long_chain_end_after_max_redirects(server):
    limits = replace(LIMITS, max_redirects=3)
    err = fetch_error(server.url("/loop"), limits, allow_address=only_127_0_0_1)
    assert (err.reason, err.transient) == (FETCH_FAILED, False) and "more than 3 redirects" in err.detail
    assert len(server.seen) == 4
    assert fetch_error(server.url("/chain/4"), limits, allow_address=only_127_0_0_1).reason == FETCH_FAILED
    assert fetch(server.url("/chain/3"), limits, allow_address=only_127_0_0_1) == PAYLOAD


def test_redirect_without_location_fails(server):
    err = fetch_error(server.url("/status/302"), allow_address=only_127_0_0_1)
    assert (err.reason, err.transient) == (FETCH_FAILED, False)


def test_one_deadline_covers_every_hop(server):
    # four hops of 0.2 s each: every hop is within 0.5 s, the chain is not
    limits = replace(LIMITS, retries=0, max_redirects=5)
    started = time.monotonic()
    assert fetch_error(server.url("/sleepy/4"), limits, allow_address=only_127_0_0_1).reason == TIMEOUT
    assert time.monotonic() - started < 2


# --- sizes, timeouts, retries --------------------------------------------------------------------

@pytest.mark.parametrize("path, outcome", [
    ("/bytes/2000", 2000), ("/bytes/2001", TOO_LARGE), ("/bytes/100000", TOO_LARGE),
    ("/chunked/2000", 2000), ("/chunked/2001", TOO_LARGE), ("/chunked/0", 0),
])
def test_byte_cap(server, path, outcome):
    if isinstance(outcome, int):
        assert len(fetch(server.url(path), allow_address=only_127_0_0_1)) == outcome
    else:
        assert fetch_error(server.url(path), allow_address=only_127_0_0_1).reason == outcome


def test_endless_body_is_cut_off_as_too_large(server):
    # Reading to the end would stall after 8 MiB and end as a timeout instead.
    err = fetch_error(server.url("/endless"), replace(LIMITS, timeout_s=2), allow_address=only_127_0_0_1)
    assert (err.reason, err.transient) == (TOO_LARGE, False)


def test_bodies_are_taken_as_sent(server):
    # gzip of 1 MB of zeros: inflated it would be over the cap
    data = fetch(server.url("/gzip"), allow_address=only_127_0_0_1)
    assert gzip.decompress(data) == bytes(1_000_000)
    assert server.seen[0].headers["Accept-Encoding"] == "identity"


def test_slow_body_times_out_per_attempt(server):
    limits = replace(LIMITS, timeout_s=0.3, retries=1)
    started = time.monotonic()
    err = fetch_error(server.url("/slow"), limits, allow_address=only_127_0_0_1)
    assert (err.reason, err.transient) == (TIMEOUT, True)
    assert 0.6 <= time.monotonic() - started < 2
    assert len(server.seen) == 2


@pytest.mark.parametrize("code", [500, 502, 503, 429, 408])
def test_transient_statuses_are_retried(server, code):
    assert fetch(server.url(f"/flaky/{code}/2"), allow_address=only_127_0_0_1) == PAYLOAD
    assert len(server.seen) == 3
    err = fetch_error(server.url(f"/status/{code}"), allow_address=only_127_0_0_1)
    assert (err.reason, err.transient) == (FETCH_FAILED, True)
    assert len(server.seen) == 3 + LIMITS.retries + 1


@pytest.mark.parametrize("code, reason", [(404, NOT_FOUND), (410, NOT_FOUND), (403, FETCH_FAILED),
                                          (400, FETCH_FAILED), (401, FETCH_FAILED), (300, FETCH_FAILED)])
def test_other_statuses_are_not_retried(server, code, reason):
    err = fetch_error(server.url(f"/status/{code}"), allow_address=only_127_0_0_1)
    assert (err.reason, err.transient) == (reason, False)
    assert len(server.seen) == 1


def test_backoff_doubles(server):
    fetch_error(server.url("/status/503"), replace(LIMITS, backoff_s=0.1), allow_address=only_127_0_0_1)
    first, second, third = (s.at for s in server.seen)
    assert second - first >= 0.09 and third - second >= 0.19


def test_connection_errors_are_retried(net):
    port = free_port()  # nothing listens there
    err = fetch_error(f"http://127.0.0.1:{port}/img", allow_address=only_127_0_0_1)
    assert (err.reason, err.transient) == (FETCH_FAILED, True)
    assert len(net.reached(port)) == LIMITS.retries + 1


def test_inline_image_cap():
    assert asyncio.run(Fetcher(LIMITS).fetch(ImageEvent("e", "s", image=PAYLOAD))) == PAYLOAD
    with pytest.raises(FetchError) as caught:
        asyncio.run(Fetcher(LIMITS).fetch(ImageEvent("e", "s", image=bytes(2001))))
    assert caught.value.reason == TOO_LARGE


# --- S3 ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3():
    """One moto S3 server for the module (starting one takes half a second), with bucket `images`."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    moto.start()
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        client.create_bucket(Bucket="images")
        client.put_object(Bucket="images", Key="a/cat.png", Body=PAYLOAD)
        client.put_object(Bucket="images", Key="big.png", Body=bytes(2001))
        yield client
    finally:
        moto.stop()


S3_LIMITS = replace(LIMITS, allowed_buckets=frozenset({"images", "missing", "Bad_Bucket!", "a" * 300}))


@pytest.mark.parametrize("uri, outcome", [
    ("s3://images/a/cat.png", PAYLOAD),
    ("s3://images/a/dog.png", NOT_FOUND),
    ("s3://missing/a/cat.png", NOT_FOUND),
    ("s3://images/big.png", TOO_LARGE),
    ("s3://other/a/cat.png", FORBIDDEN_SOURCE),
    ("s3://user@images/a/cat.png", FORBIDDEN_SOURCE),
    ("s3://images:9000/a/cat.png", FORBIDDEN_SOURCE),
    ("s3://Bad_Bucket!/key", UNSUPPORTED_SOURCE),
    ("s3://" + "a" * 300 + "/key", UNSUPPORTED_SOURCE),
    ("s3://[bad/key", UNSUPPORTED_SOURCE),
    ("s3://images", UNSUPPORTED_SOURCE),
    ("s3://images/", UNSUPPORTED_SOURCE),
    ("s3:///key", UNSUPPORTED_SOURCE),
])
def test_s3(s3, uri, outcome):
    if isinstance(outcome, bytes):
        assert fetch(uri, S3_LIMITS, s3_client=s3) == outcome
    else:
        err = fetch_error(uri, S3_LIMITS, s3_client=s3)
        assert (err.reason, err.transient) == (outcome, False), err


class BrokenS3:
    """A client failing as no S3 client should: the fetcher must still end in a FetchError."""

    def get_object(self, **kwargs):
        raise RuntimeError("something nobody expected")


def test_unexpected_exceptions_become_fetch_errors():
    err = fetch_error("s3://images/a/cat.png", S3_LIMITS, s3_client=BrokenS3())
    assert (err.reason, err.transient) == (FETCH_FAILED, False)
    assert "RuntimeError" in err.detail and isinstance(err.__cause__, RuntimeError)


# --- file:// -------------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "cat.png").write_bytes(PAYLOAD)
    (root / "big.png").write_bytes(bytes(2001))
    (tmp_path / "secret.png").write_bytes(PAYLOAD)
    (root / "inside-link.png").symlink_to(root / "cat.png")
    (root / "outside-link.png").symlink_to(tmp_path / "secret.png")
    (root / "dir-link").symlink_to(tmp_path)
    (root / "loop").symlink_to(root / "loop")
    return root


@pytest.mark.parametrize("path, outcome", [
    ("/cat.png", PAYLOAD), ("/sub/../cat.png", PAYLOAD), ("/inside-link.png", PAYLOAD), ("/c%61t.png", PAYLOAD),
    ("/../secret.png", FORBIDDEN_SOURCE), ("/%2e%2e/secret.png", FORBIDDEN_SOURCE),
    ("/sub/../../secret.png", FORBIDDEN_SOURCE),
    ("/outside-link.png", FORBIDDEN_SOURCE), ("/dir-link/secret.png", FORBIDDEN_SOURCE),
    ("/a%00b.png", NOT_FOUND), ("/" + "a" * 300 + ".png", NOT_FOUND), ("/" + "a/" * 3000 + "b.png", NOT_FOUND),
    ("/sub", NOT_FOUND), ("/sub/", NOT_FOUND), ("/missing.png", NOT_FOUND), ("/cat.png/x", NOT_FOUND),
    ("/loop", NOT_FOUND), ("/big.png", TOO_LARGE), ("/%ff.png", NOT_FOUND),
])
def test_file(files, path, outcome):
    limits = replace(LIMITS, file_root=files)
    uri = "file://" + quote(str(files)) + path
    if isinstance(outcome, bytes):
        assert fetch(uri, limits) == outcome
    else:
        err = fetch_error(uri, limits)
        assert (err.reason, err.transient) == (outcome, False), err


def test_file_uri_must_name_a_local_absolute_path(files):
    limits = replace(LIMITS, file_root=files)
    assert fetch(f"file://localhost{files}/cat.png", limits) == fetch(f"file:{files}/cat.png", limits) == PAYLOAD
    for uri in (f"file://host{files}/cat.png", f"file://localhost:80{files}/cat.png", "file:cat.png",
                "file:sub/../cat.png"):
        assert fetch_error(uri, limits).reason == UNSUPPORTED_SOURCE, uri


def test_file_disabled_without_root(files):
    assert fetch_error(f"file://{files}/cat.png").reason == FORBIDDEN_SOURCE


def test_fifo_is_refused_without_blocking(files):
    fifo = files / "pipe.png"
    os.mkfifo(fifo)

    def unblock():  # only runs if the fetcher hangs opening the FIFO, so that the test ends
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    timer = threading.Timer(5, unblock)
    timer.daemon = True
    timer.start()
    try:
        assert fetch_error(f"file://{fifo}", replace(LIMITS, file_root=files)).reason == NOT_FOUND
    finally:
        timer.cancel()


# --- hostile URIs --------------------------------------------------------------------------------

HOSTILE = [
    "", " ", "\x00", "\ud800", "://", "http", "http:", "http:/", "http://", "http:///img", "http://:80/", "http://@/",
    "http://[::1/x", "http://[::1]x/", "http://[]/", "http://[:::]/", "http://[v1.x]/", "http://[::1%]/",
    "http://[::1%25%00]/", "http://[::ffff:1.2.3.4.5]/", "http://127.0.0.1:99999/", "http://127.0.0.1:-1/",
    "http://127.0.0.1:port/", "http://127.0.0.1:80:80/", "http://exa mple.com/", "http://a\x00b/", "http://a\r\nb/",
    "http://\x7f/", "http://a\tb/", "http://xn--/", "http://xn--a/", "http://-/", "http://_/", "http://a..b/",
    "http://" + "a" * 300 + "/", "http://" + "a." * 200 + "/", "http://" + ("a" * 63 + ".") * 5 + "/",
    "http://%31%32%37.0.0.1/", "http://127.0.0.1%2e/", "http://1.2.3.4.5/", "http://999.1.1.1/", "http://..../",
    "http://example.com\\@127.0.0.1/", "http:\\\\127.0.0.1\\img", "http:127.0.0.1", "http://\ud800/",
    "https://💩/", "http://ä.test/", "http://" + "ä" * 100 + "/", "ｈｔｔｐ://127.0.0.1/",
    "http://127.0.0.1/" + "a" * 100_000,
    "http://127.0.0.1/\r\nX-Injected: 1", "http://user:pa ss\r\n@127.0.0.1/", "http://[fe80::1%25" + "a" * 300 + "]/",
    "ftp://127.0.0.1/", "gopher://127.0.0.1/", "data:,x", "javascript:x", "mailto:a@b", "urn:x",
    "file:", "file://", "file:///", "file:///%00", "file:///" + "a/" * 5000, "file://[::1/x", "file:///\ud800",
    "s3:", "s3://", "s3:///", "s3://[bad/key", "s3://images", "s3://Bad_Bucket!/k", "s3://images/" + "k" * 2000,
    "s3://images/\ud800", "s3://images/\x00", "s3://" + "a" * 300 + "/k", "s3://images/%ff",
    "http://" + "1" * 5000 + "/", "http://0x" + "f" * 100 + "/", "http://4294967296/", "http://0x100000000/",
    None,
]


@pytest.mark.parametrize("uri", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_uris_raise_only_fetch_error(s3, files, uri):
    limits = replace(S3_LIMITS, file_root=files, timeout_s=0.3, retries=1)
    try:
        fetch(uri, limits, s3_client=s3)
    except FetchError as err:
        assert err.reason in (UNSUPPORTED_SOURCE, FORBIDDEN_SOURCE, NOT_FOUND, FETCH_FAILED, TOO_LARGE), err
        assert len(err.detail) <= 1003
    else:
        pytest.fail(f"{uri!r} was fetched")


# --- whose fault: the storage's or the record's ----------------------------------------------------

@pytest.fixture
def s3_behind_proxy(s3):
    """The module's moto server behind a switchable proxy, and a client that goes through it."""
    import boto3

    from tests.workers.proxy import SwitchableProxy

    with SwitchableProxy(int(s3.meta.endpoint_url.rsplit(":", 1)[1])) as proxy:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{proxy.port}", region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        yield proxy, client


@pytest.mark.parametrize("mode", ["refuse", "slow_down"])
def test_an_s3_endpoint_failing_for_everyone_is_the_storage_s_fault(s3_behind_proxy, mode):
    proxy, client = s3_behind_proxy
    assert fetch("s3://images/a/cat.png", S3_LIMITS, s3_client=client) == PAYLOAD
    proxy.switch(mode)
    with pytest.raises(SystemFault) as caught:
        fetch("s3://images/a/cat.png", S3_LIMITS, s3_client=client)
    assert caught.value.dependency == STORAGE and "S3 endpoint" in caught.value.detail
    proxy.switch("pass")
    assert fetch("s3://images/a/cat.png", S3_LIMITS, s3_client=client) == PAYLOAD


class OneObjectFails:
    """A client whose endpoint answers (a bucket's HEAD works) while one object keeps failing with 500."""

    def __init__(self):
        self.gets = 0

    def head_bucket(self, **kwargs):
        return {}

    def get_object(self, **kwargs):
        from botocore.exceptions import ClientError

        self.gets += 1
        raise ClientError({"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
                          "GetObject")


def test_an_object_failing_while_its_endpoint_answers_is_the_record_s_fault():
    client = OneObjectFails()
    err = fetch_error("s3://images/a/cat.png", S3_LIMITS, s3_client=client)
    assert (err.reason, err.transient) == (FETCH_FAILED, True)
    assert client.gets == S3_LIMITS.retries + 2  # the retries, then one more once the endpoint answered


class RefusesCredentials:
    def get_object(self, **kwargs):
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "InvalidAccessKeyId"}, "ResponseMetadata": {"HTTPStatusCode": 403}},
                          "GetObject")


def test_refused_credentials_are_the_storage_s_fault():
    with pytest.raises(SystemFault) as caught:
        fetch("s3://images/a/cat.png", S3_LIMITS, s3_client=RefusesCredentials())
    assert caught.value.dependency == STORAGE and "InvalidAccessKeyId" in caught.value.detail


def test_a_file_root_that_is_gone_is_the_storage_s_fault_and_a_missing_file_the_record_s(files, tmp_path):
    limits = replace(LIMITS, file_root=files)
    assert fetch_error("file://" + quote(str(files)) + "/missing.png", limits).reason == NOT_FOUND
    files.rename(tmp_path / "unmounted")
    with pytest.raises(SystemFault) as caught:
        fetch("file://" + quote(str(files)) + "/cat.png", limits)
    assert caught.value.dependency == STORAGE and "is gone" in caught.value.detail
