"""Fetch image bytes for an event: inline, file://, s3:// and http(s)://, safely by default.

- HTTP(S): addresses that are loopback, private, link-local, reserved, multicast or cloud metadata (or
  IPv6 forms that carry such an IPv4 address) are refused unless allowed. The host is judged as the
  HTTP client will use it (yarl's normalisation, every IPv4 spelling the C library accepts); an IP
  literal is then requested in the canonical spelling that was judged, and a name is checked at
  connection time by a resolver that refuses forbidden answers (so DNS rebinding is covered too);
  every redirect hop goes through the same check;
- S3: only the configured buckets; file://: only under the configured root;
- byte limits on every source, one deadline per attempt, retries with backoff on transient errors.

Whose fault a failure is (workers/failures.py): a FetchError is the record's, with a dead-letter reason
code; a SystemFault names the storage the worker is configured with (the S3 endpoint and its
credentials, the file root) failing for everyone. A transient failure of S3 or of the file root that
outlasts the retries is put to the storage itself (`_s3_answers`: the bucket's HEAD; `_root_answers`:
the root's listing): when that fails too, the storage is down (SystemFault: the worker pauses and keeps the event);
when it answers, the object alone fails and gets one more try before it is the record's fault. A
third-party HTTP origin is not the worker's storage: its failures are the record's after the
retries. Nothing else escapes, whatever the URI.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import re
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union
from urllib.parse import unquote, urlsplit

import yarl

from topics.events import (
    FETCH_FAILED, FORBIDDEN_SOURCE, NOT_FOUND, TIMEOUT, TOO_LARGE, UNSUPPORTED_SOURCE, ImageEvent,
)
from workers.failures import STORAGE, RecordFault, SystemFault, describe

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
# Whether one address may be contacted; the fetcher also applies it to every IPv4 address embedded in
# an IPv6 one, so a policy only has to judge plain addresses.
AddressPolicy = Callable[[IPAddress], bool]

_REDIRECTS = (301, 302, 303, 307, 308)
_HTTP_SCHEMES = ("http", "https")
# A DNS name as resolvers take it (underscores occur in real names); yarl has already turned
# internationalised names into ASCII and lowercased them.
_NAME = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*\.?", re.IGNORECASE)
_NUMERIC = re.compile(r"[0-9a-fx.]+", re.IGNORECASE)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")


class FetchError(RecordFault):
    """The record's fault; `transient`: worth another attempt (a timeout, a 5xx, a reset connection)."""

    def __init__(self, reason: str, detail: str, transient: bool = False):
        super().__init__(reason, detail)
        self.transient = transient


# S3 answers that say the worker's credentials are refused, whatever the object: the system's fault.
_S3_CREDENTIALS = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                             "TokenRefreshRequired", "RequestTimeTooSkewed", "InvalidClientTokenId",
                             "ExpiredTokenException"})
# S3 answers of an endpoint that is busy or failing: worth retrying, then put to the endpoint itself.
_S3_BUSY = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable",
                      "InternalError", "RequestLimitExceeded"})


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 10.0  # per attempt, redirects included
    retries: int = 2  # extra attempts after a transient failure
    backoff_s: float = 0.2  # doubled after each attempt
    max_redirects: int = 3
    allow_private: bool = False  # allow loopback/private/link-local HTTP targets (tests, on-prem)
    allowed_buckets: frozenset[str] = field(default_factory=frozenset)  # empty: no S3 access
    file_root: Path | None = None  # None: no file:// access


def _is_public(ip: IPAddress) -> bool:
    # Python before 3.13 counts multicast and local-use NAT64 as global.
    return ip.is_global and not ip.is_multicast and ip not in _LOCAL_NAT64


def default_policy(allow_private: bool) -> AddressPolicy:
    """Public addresses only, or every address (`allow_private`: tests, on-prem)."""
    return (lambda ip: True) if allow_private else _is_public


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses that a translator or tunnel would carry traffic for `ip` to."""
    found = []
    if ip in _NAT64 or ip in _IPV4_TRANSLATED or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour:
        found.append(ip.sixtofour)
    if ip.teredo:
        found.extend(ip.teredo)
    return found


def permitted(ip: IPAddress, policy: AddressPolicy) -> bool:
    """Whether an HTTP fetch may connect to `ip` under `policy` (an IPv4-mapped address judged as its
    IPv4 one, and every IPv4 address an IPv6 one carries judged too)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # the kernel connects to the IPv4 address itself
    embedded = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else []
    return policy(ip) and all(policy(inner) for inner in embedded)


def _ip_literal(url: yarl.URL) -> IPAddress | None:
    """The address the host of `url` stands for by itself, in any spelling that the HTTP client or the
    C library would connect to without a DNS lookup; None for a name. ValueError for a host that is
    neither (an invalid IPv6 literal, an all-numeric non-address, characters no name has)."""
    host = url.raw_host
    if ":" in host:
        return ipaddress.IPv6Address(url.host)  # yarl keeps brackets' content only; zone decoded
    bare = host.rstrip(".")  # aiohttp passes "127.0.0.1." on as an address; judge it as one
    if _NUMERIC.fullmatch(bare):  # inet_aton also takes "127.0.0.1 anything": characters first
        try:
            # what getaddrinfo takes too: decimal, octal, hex and shortened forms (127.1)
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            pass
    # url.host decodes punycode: UnicodeError, a ValueError, for an invalid xn-- label
    if not _NAME.fullmatch(host) or len(host) > 254 or not url.host:
        raise ValueError("the host is not a valid name")
    if bare.replace(".", "").isdigit():  # aiohttp would take it for an address, the C library would not
        raise ValueError("the host is neither an IPv4 address nor a name")
    return None


def _http_resolver(policy: AddressPolicy):
    import aiohttp
    from aiohttp.abc import AbstractResolver

    def allowed(answer: dict) -> bool:
        try:
            return permitted(ipaddress.ip_address(answer["host"]), policy)
        except ValueError:
            return False

    class GuardedResolver(AbstractResolver):
        """Resolves like the default resolver, then refuses forbidden addresses: the check happens at
        connection time, so DNS answers that change between check and use (rebinding) are covered."""

        def __init__(self):
            self._inner = aiohttp.ThreadedResolver()

        async def resolve(self, host, port=0, family=socket.AF_INET):
            answers = await self._inner.resolve(host, port, family)
            kept = [a for a in answers if allowed(a)]
            if not kept:
                raise FetchError(FORBIDDEN_SOURCE, f"{host} resolves to a forbidden address "
                                                   f"({', '.join(a['host'] for a in answers)})")
            return kept

        async def close(self):
            await self._inner.close()

    return GuardedResolver()


def _show(uri) -> str:
    """A URI for a detail message: quoted, and short, since producers can send megabytes."""
    text = str(uri)
    return repr(text if len(text) <= 200 else text[:200] + "...")


def _split(uri: str):
    try:
        return urlsplit(uri)
    except ValueError as err:  # e.g. an unclosed IPv6 bracket
        raise FetchError(UNSUPPORTED_SOURCE, f"cannot parse {_show(uri)}: {err}") from err


def _s3_answer(err) -> tuple[str, int]:
    """A botocore ClientError's error code and HTTP status."""
    return (err.response.get("Error", {}).get("Code", ""),
            err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


class Fetcher:
    """One per worker; owns an HTTP session and an S3 client.

    `allow_address` replaces the address policy that `limits.allow_private` selects (tests, or a
    deployment that allows some private networks only)."""

    def __init__(self, limits: FetchLimits, s3_client=None, allow_address: AddressPolicy | None = None):
        self.limits = limits
        self._s3 = s3_client
        self._policy = allow_address or default_policy(limits.allow_private)
        self._session = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def inline(self, event: ImageEvent) -> bytes | None:
        """The event's inline image (None for a uri event), without a trip through the event loop.

        Raises:
            FetchError: too_large, past limits.max_bytes.
        """
        return None if event.image is None else self._capped(event.image, "inline image")

    async def fetch(self, event: ImageEvent) -> bytes:
        """The event's image bytes.

        Raises:
            FetchError: the record's fault (not_found, forbidden_source, too_large, ...), after retries.
            SystemFault: the worker's storage (S3 endpoint, file root) fails for everyone.
        """
        if event.image is not None:
            return self.inline(event)
        if not isinstance(event.uri, str):
            raise FetchError(UNSUPPORTED_SOURCE, "the event has neither a uri nor image bytes")
        scheme = _split(event.uri).scheme.lower()
        handler = {"s3": self._s3_get, "http": self._http_get, "https": self._http_get,
                   "file": self._file_get}.get(scheme)
        if handler is None:
            raise FetchError(UNSUPPORTED_SOURCE, f"unsupported uri scheme {scheme!r} in {_show(event.uri)}; "
                                                 "use s3://, http(s)://, file:// or inline image bytes")
        storage = {"s3": self._s3_answers, "file": self._root_answers}.get(scheme)
        try:
            return await self._with_retries(handler, event.uri)
        except FetchError as err:
            if not err.transient or storage is None:
                raise
            # Outlasted the retries: the storage fails for everyone (SystemFault), or this object does.
            await storage(event.uri, err)
            return await self._attempt(handler, event.uri)

    async def _with_retries(self, handler, uri: str) -> bytes:
        delay = self.limits.backoff_s
        for attempt in range(self.limits.retries + 1):
            try:
                return await self._attempt(handler, uri)
            except FetchError as err:
                if not err.transient or attempt == self.limits.retries:
                    raise
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    async def _attempt(self, handler, uri: str) -> bytes:
        """One try under the deadline; nothing but FetchError and SystemFault escapes."""
        try:
            return await asyncio.wait_for(handler(uri), self.limits.timeout_s)
        except asyncio.TimeoutError:
            raise FetchError(TIMEOUT, f"{_show(uri)} took longer than {self.limits.timeout_s}s",
                             transient=True) from None
        except (FetchError, SystemFault):
            raise
        except Exception as err:  # a library raising what nothing here expects: a dead letter, not a crash
            raise FetchError(FETCH_FAILED, f"{_show(uri)}: unexpected {type(err).__name__}: {err}") from err

    async def _s3_answers(self, uri: str, failure: FetchError) -> None:
        """Whether the S3 endpoint answers at all: a HEAD of the bucket. Any answer of the endpoint's own
        (found, missing, forbidden) will do; failing, throttled or unreachable raises SystemFault."""
        bucket = _split(uri).netloc
        try:
            await asyncio.wait_for(asyncio.to_thread(self._s3_head_bucket, bucket), self.limits.timeout_s)
        except asyncio.TimeoutError:
            raise SystemFault(STORAGE, f"S3 endpoint: HEAD of bucket {bucket!r} took longer than "
                                       f"{self.limits.timeout_s}s ({failure.detail})") from None

    def _s3_head_bucket(self, bucket: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._s3_client().head_bucket(Bucket=bucket)
        except ClientError as err:
            code, status = _s3_answer(err)
            if status >= 500 or code in _S3_BUSY or code in _S3_CREDENTIALS:
                raise SystemFault(STORAGE, f"S3 endpoint: HEAD of bucket {bucket!r} answered {code or status}") \
                    from err
        except BotoCoreError as err:
            raise SystemFault(STORAGE, f"S3 endpoint: {describe(err)}") from err

    async def _root_answers(self, uri: str, failure: FetchError) -> None:
        """Whether the file root can be read at all (a network mount gone, a disk failing)."""
        root = self.limits.file_root
        try:
            await asyncio.wait_for(asyncio.to_thread(os.listdir, root), self.limits.timeout_s)
        except (OSError, asyncio.TimeoutError) as err:
            raise SystemFault(STORAGE, f"file root {str(root)!r}: {describe(err)} ({failure.detail})") from err

    def _capped(self, data: bytes, what: str) -> bytes:
        if len(data) > self.limits.max_bytes:
            raise FetchError(TOO_LARGE, f"{what} is larger than {self.limits.max_bytes} bytes")
        return data

    async def _file_get(self, uri: str) -> bytes:
        root = self.limits.file_root
        if root is None:
            raise FetchError(FORBIDDEN_SOURCE, "file:// sources are disabled; set CASED_FILE_ROOT to allow a folder")
        parts = _split(uri)
        name = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not name.startswith("/"):
            raise FetchError(UNSUPPORTED_SOURCE, f"{_show(uri)}: expected file:///ABSOLUTE/PATH")
        try:
            path = Path(name).resolve()
            inside = path.is_relative_to(root.resolve())
        except (OSError, RuntimeError, ValueError) as err:  # a symlink loop (Python < 3.13), a NUL byte
            raise FetchError(NOT_FOUND, f"{_show(uri)}: {err}") from err
        if not inside:
            raise FetchError(FORBIDDEN_SOURCE, f"{_show(name)} is outside the allowed file root {root}")
        return await asyncio.to_thread(self._read_file, path, uri)

    def _read_file(self, path: Path, uri: str) -> bytes:
        # O_NOFOLLOW: the resolved path was checked, a symlink swapped in since is not followed;
        # O_NONBLOCK: a FIFO opens at once and is then refused as not a regular file.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EPERM):
                raise FetchError(FORBIDDEN_SOURCE, f"{_show(uri)}: {err.strerror}") from err
            missing = err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP)
            if missing and not os.path.isdir(self.limits.file_root):  # the root itself is gone (unmounted)
                raise SystemFault(STORAGE, f"file root {str(self.limits.file_root)!r} is gone") from err
            raise FetchError(NOT_FOUND if missing else FETCH_FAILED, f"{_show(uri)}: {err.strerror}",
                             transient=not missing) from err
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise FetchError(NOT_FOUND, f"{_show(uri)} is not a regular file")
            if info.st_size > self.limits.max_bytes:
                raise FetchError(TOO_LARGE, f"{_show(uri)} is larger than {self.limits.max_bytes} bytes")
            data = bytearray()  # read to the cap only: the file may have grown since fstat
            while len(data) <= self.limits.max_bytes and (chunk := os.read(fd, self.limits.max_bytes + 1 - len(data))):
                data += chunk
            return self._capped(bytes(data), _show(uri))
        finally:
            os.close(fd)

    async def _s3_get(self, uri: str) -> bytes:
        parts = _split(uri)
        bucket, key = parts.netloc, parts.path.lstrip("/")
        if not bucket or not key:
            raise FetchError(UNSUPPORTED_SOURCE, f"{_show(uri)}: expected s3://BUCKET/KEY")
        if bucket not in self.limits.allowed_buckets:
            raise FetchError(FORBIDDEN_SOURCE, f"bucket {bucket!r} is not allowed; add it to CASED_S3_BUCKETS")
        return await asyncio.to_thread(self._s3_get_blocking, bucket, key, uri)

    def _s3_client(self):
        if self._s3 is None:
            import boto3
            from botocore.config import Config

            # One attempt per call within the fetch's deadline: the retries, and what a failure that
            # outlasts them means, are the fetcher's (botocore's own would retry for a minute unseen).
            self._s3 = boto3.client("s3", config=Config(
                connect_timeout=self.limits.timeout_s, read_timeout=self.limits.timeout_s,
                retries={"mode": "standard", "total_max_attempts": 1}))
        return self._s3

    def _s3_get_blocking(self, bucket: str, key: str, uri: str) -> bytes:
        from botocore.exceptions import (
            BotoCoreError, ClientError, NoCredentialsError, ParamValidationError, PartialCredentialsError,
        )

        try:
            response = self._s3_client().get_object(Bucket=bucket, Key=key)
            with response["Body"] as body:
                if response.get("ContentLength", 0) > self.limits.max_bytes:
                    raise FetchError(TOO_LARGE, f"{_show(uri)} is {response['ContentLength']} bytes, over "
                                                f"{self.limits.max_bytes}")
                return self._capped(body.read(self.limits.max_bytes + 1), _show(uri))
        except ClientError as err:
            code, status = _s3_answer(err)
            if code in ("NoSuchKey", "NoSuchBucket", "404"):
                raise FetchError(NOT_FOUND, f"{_show(uri)} does not exist") from err
            if code in _S3_CREDENTIALS:
                raise SystemFault(STORAGE, f"S3 refused the worker's credentials: {code}") from err
            raise FetchError(FETCH_FAILED, f"{_show(uri)}: {code or status}",
                             transient=status >= 500 or code in _S3_BUSY) from err
        except (ParamValidationError, ValueError) as err:  # a bucket or key botocore will not send
            raise FetchError(UNSUPPORTED_SOURCE, f"{_show(uri)}: {err}") from err
        except (NoCredentialsError, PartialCredentialsError) as err:
            raise SystemFault(STORAGE, f"S3: {err}") from err
        except BotoCoreError as err:  # connection refused or reset, DNS, timeouts
            raise FetchError(FETCH_FAILED, f"{_show(uri)}: {err}", transient=True) from err

    async def _http(self):
        if self._session is None:
            import aiohttp

            connector = aiohttp.TCPConnector(resolver=_http_resolver(self._policy))
            # Images come compressed already; a compressed body could inflate past max_bytes in one
            # chunk (a decompression bomb), so bodies are taken as sent.
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  headers={"Accept-Encoding": "identity"})
        return self._session

    def _target(self, url: yarl.URL, hop: str) -> yarl.URL:
        """`url` as it will be requested: host checked and, for an IP literal, rewritten to the
        canonical spelling that was checked, so that the client connects to exactly that address.
        A name is left to the guarded resolver, which checks every address it resolves to."""
        if url.scheme not in _HTTP_SCHEMES:
            raise FetchError(FORBIDDEN_SOURCE, f"{hop} {_show(url)}: only http(s) may be followed")
        if not url.raw_host:
            raise FetchError(UNSUPPORTED_SOURCE, f"{hop} {_show(url)} has no host")
        try:
            ip = _ip_literal(url)
        except ValueError as err:
            raise FetchError(UNSUPPORTED_SOURCE, f"{hop} {_show(url)}: {err}") from err
        if ip is None:
            return url
        if not permitted(ip, self._policy):
            raise FetchError(FORBIDDEN_SOURCE, f"{hop} {_show(url)}: the host is {ip}, a forbidden address")
        return url if url.raw_host == str(ip) else url.with_host(str(ip))

    def _redirect(self, url: yarl.URL, location: str) -> yarl.URL:
        try:
            following = url.join(yarl.URL(location))
        except ValueError as err:  # UnicodeError among them
            raise FetchError(FETCH_FAILED, f"{_show(url)} redirected to an unparsable Location "
                                           f"{_show(location)}") from err
        return self._target(following, f"{_show(url)} redirected to")

    async def _http_get(self, uri: str) -> bytes:
        import aiohttp

        try:
            url = yarl.URL(uri)
        except ValueError as err:  # UnicodeError among them: a host IDNA refuses
            raise FetchError(UNSUPPORTED_SOURCE, f"cannot parse {_show(uri)}: {err}") from err
        url = self._target(url, "uri")
        session = await self._http()
        for _ in range(self.limits.max_redirects + 1):
            try:
                async with session.get(url, allow_redirects=False) as response:
                    if response.status in _REDIRECTS:
                        location = response.headers.get("Location")
                        if location is None:
                            raise FetchError(FETCH_FAILED, f"{_show(url)} answered {response.status} "
                                                           "without a Location")
                        url = self._redirect(url, location)
                        continue
                    if response.status in (404, 410):
                        raise FetchError(NOT_FOUND, f"{_show(url)} answered {response.status}")
                    if response.status >= 300:
                        raise FetchError(FETCH_FAILED, f"{_show(url)} answered {response.status}",
                                         transient=response.status >= 500 or response.status in (408, 429))
                    if (response.content_length or 0) > self.limits.max_bytes:
                        raise FetchError(TOO_LARGE, f"{_show(url)} is {response.content_length} bytes, over "
                                                    f"{self.limits.max_bytes}")
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(1 << 16):
                        body.extend(chunk)
                        if len(body) > self.limits.max_bytes:
                            raise FetchError(TOO_LARGE, f"{_show(url)} is larger than {self.limits.max_bytes} bytes")
                    return bytes(body)
            except ValueError as err:  # aiohttp.InvalidURL among them: a request aiohttp will not send
                raise FetchError(UNSUPPORTED_SOURCE, f"{_show(url)}: {type(err).__name__}: {err}") from err
            except aiohttp.ClientError as err:
                raise FetchError(FETCH_FAILED, f"{_show(url)}: {type(err).__name__}: {err}", transient=True) from err
        raise FetchError(FETCH_FAILED, f"{_show(uri)}: more than {self.limits.max_redirects} redirects "
                                       f"(the last to {_show(url)})")
