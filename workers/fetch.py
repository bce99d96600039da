"""Fetch image bytes for an event: inline, file://, s3:// and http(s)://, safely by default.

- HTTP(S): addresses that are loopback, private, link-local, reserved or cloud metadata are refused
  unless allowed, checked on every connection (a resolver that refuses them) and for literal IPs, on
  every redirect hop;
- S3: only the configured buckets; file://: only under the configured root;
- byte limits on every source, timeouts, retries with backoff on transient errors.
Failures raise FetchError with a dead-letter reason code.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from topics.events import (
    FETCH_FAILED, FORBIDDEN_SOURCE, NOT_FOUND, TIMEOUT, TOO_LARGE, UNSUPPORTED_SOURCE, ImageEvent,
)


class FetchError(Exception):
    def __init__(self, reason: str, detail: str, transient: bool = False):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.transient = reason, detail, transient


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 10.0
    retries: int = 2  # extra attempts after a transient failure
    backoff_s: float = 0.2  # doubled after each attempt
    max_redirects: int = 3
    allow_private: bool = False  # allow loopback/private/link-local HTTP targets (tests, on-prem)
    allowed_buckets: frozenset[str] = field(default_factory=frozenset)  # empty: no S3 access
    file_root: Path | None = None  # None: no file:// access


def address_allowed(address: str, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return allow_private or ip.is_global


def _http_resolver(allow_private: bool):
    import aiohttp
    from aiohttp.abc import AbstractResolver

    class GuardedResolver(AbstractResolver):
        """Resolves like the default resolver, then refuses forbidden addresses: the check happens at
        connection time, so DNS answers that change between check and use (rebinding) are covered."""

        def __init__(self):
            self._inner = aiohttp.ThreadedResolver()

        async def resolve(self, host, port=0, family=socket.AF_INET):
            answers = await self._inner.resolve(host, port, family)
            allowed = [a for a in answers if address_allowed(a["host"], allow_private)]
            if not allowed:
                raise FetchError(FORBIDDEN_SOURCE, f"{host} resolves to a forbidden address "
                                                   f"({', '.join(a['host'] for a in answers)})")
            return allowed

        async def close(self):
            await self._inner.close()

    return GuardedResolver()


class Fetcher:
    """One per worker; owns an HTTP session and an S3 client."""

    def __init__(self, limits: FetchLimits, s3_client=None):
        self.limits = limits
        self._s3 = s3_client
        self._session = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def fetch(self, event: ImageEvent) -> bytes:
        if event.image is not None:
            return self._capped(event.image, "inline image")
        scheme = urlsplit(event.uri).scheme.lower()
        handler = {"s3": self._s3_get, "http": self._http_get, "https": self._http_get,
                   "file": self._file_get}.get(scheme)
        if handler is None:
            raise FetchError(UNSUPPORTED_SOURCE, f"unsupported uri scheme {scheme!r} in {event.uri!r}; "
                                                 "use s3://, http(s)://, file:// or inline image bytes")
        return await self._with_retries(handler, event.uri)

    async def _with_retries(self, handler, uri: str) -> bytes:
        delay = self.limits.backoff_s
        for attempt in range(self.limits.retries + 1):
            try:
                return await asyncio.wait_for(handler(uri), self.limits.timeout_s)
            except asyncio.TimeoutError:
                error = FetchError(TIMEOUT, f"{uri} took longer than {self.limits.timeout_s}s", transient=True)
            except FetchError as err:
                error = err
            if not error.transient or attempt == self.limits.retries:
                raise error
            await asyncio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _capped(self, data: bytes, what: str) -> bytes:
        if len(data) > self.limits.max_bytes:
            raise FetchError(TOO_LARGE, f"{what} is larger than {self.limits.max_bytes} bytes")
        return data

    async def _file_get(self, uri: str) -> bytes:
        root = self.limits.file_root
        if root is None:
            raise FetchError(FORBIDDEN_SOURCE, "file:// sources are disabled; set CASED_FILE_ROOT to allow a folder")
        path = Path(unquote(urlsplit(uri).path)).resolve()
        if not path.is_relative_to(root.resolve()):
            raise FetchError(FORBIDDEN_SOURCE, f"{path} is outside the allowed file root {root}")
        if not path.is_file():
            raise FetchError(NOT_FOUND, f"{path} does not exist")
        if path.stat().st_size > self.limits.max_bytes:
            raise FetchError(TOO_LARGE, f"{path} is larger than {self.limits.max_bytes} bytes")
        return await asyncio.to_thread(path.read_bytes)

    async def _s3_get(self, uri: str) -> bytes:
        parts = urlsplit(uri)
        bucket, key = parts.netloc, parts.path.lstrip("/")
        if not bucket or not key:
            raise FetchError(UNSUPPORTED_SOURCE, f"{uri}: expected s3://BUCKET/KEY")
        if bucket not in self.limits.allowed_buckets:
            raise FetchError(FORBIDDEN_SOURCE, f"bucket {bucket!r} is not allowed; add it to CASED_S3_BUCKETS")
        return await asyncio.to_thread(self._s3_get_blocking, bucket, key, uri)

    def _s3_get_blocking(self, bucket: str, key: str, uri: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        if self._s3 is None:
            import boto3

            self._s3 = boto3.client("s3")
        try:
            response = self._s3.get_object(Bucket=bucket, Key=key)
            if response.get("ContentLength", 0) > self.limits.max_bytes:
                raise FetchError(TOO_LARGE, f"{uri} is {response['ContentLength']} bytes, over "
                                            f"{self.limits.max_bytes}")
            return self._capped(response["Body"].read(self.limits.max_bytes + 1), uri)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "NoSuchBucket", "404"):
                raise FetchError(NOT_FOUND, f"{uri} does not exist") from err
            raise FetchError(FETCH_FAILED, f"{uri}: {code or status}", transient=status >= 500 or
                             code in ("SlowDown", "Throttling", "RequestTimeout")) from err
        except BotoCoreError as err:
            raise FetchError(FETCH_FAILED, f"{uri}: {err}", transient=True) from err

    async def _http(self):
        if self._session is None:
            import aiohttp

            connector = aiohttp.TCPConnector(resolver=_http_resolver(self.limits.allow_private))
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError(UNSUPPORTED_SOURCE, f"cannot follow {url!r}")
        try:
            literal = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return  # a name: the resolver checks what it resolves to
        if not address_allowed(str(literal), self.limits.allow_private):
            raise FetchError(FORBIDDEN_SOURCE, f"{parts.hostname} is a forbidden address")

    async def _http_get(self, url: str) -> bytes:
        import aiohttp

        session = await self._http()
        for _ in range(self.limits.max_redirects + 1):
            self._check_url(url)
            try:
                async with session.get(url, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                        url = urljoin(url, response.headers["Location"])
                        continue
                    if response.status == 404:
                        raise FetchError(NOT_FOUND, f"{url} answered 404")
                    if response.status >= 400:
                        raise FetchError(FETCH_FAILED, f"{url} answered {response.status}",
                                         transient=response.status >= 500 or response.status == 429)
                    if (response.content_length or 0) > self.limits.max_bytes:
                        raise FetchError(TOO_LARGE, f"{url} is {response.content_length} bytes, over "
                                                    f"{self.limits.max_bytes}")
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(1 << 16):
                        body.extend(chunk)
                        if len(body) > self.limits.max_bytes:
                            raise FetchError(TOO_LARGE, f"{url} is larger than {self.limits.max_bytes} bytes")
                    return bytes(body)
            except aiohttp.ClientError as err:
                raise FetchError(FETCH_FAILED, f"{url}: {err}", transient=True) from err
        raise FetchError(FETCH_FAILED, f"more than {self.limits.max_redirects} redirects")
