"""Calls to providers over the app's one pooled ClientSession.

aiohttp's client errors are translated into ours here and nowhere else, both around the
request (before headers) and around reading the body.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp

from router import tls
from router.balancer import Target
from router.errors import UpstreamError, UpstreamTimeout
from router.replies import read_limited

Prepared = tuple[dict[str, str], aiohttp.ClientTimeout, ssl.SSLContext | bool]


class Reply(Protocol):
    """An upstream response whose headers have arrived; the body is read or iterated once."""

    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class Upstream(Protocol):
    """A provider as the proxy sees it: the client's request in, a reply in the client's API.

    `client` is the client's request headers, for the few a provider forwards.
    """

    async def send(
        self, target: Target, path: str, body: bytes, stream: bool, client: Mapping[str, str]
    ) -> Reply: ...


def _translate(exc: BaseException, when: str) -> UpstreamError:
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeout(f"timed out {when}")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return UpstreamError("TLS failed (an untrusted certificate? see ca_file, verify_tls)")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(f"connect failed ({exc.os_error.strerror or 'refused'})")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return UpstreamError(f"connection reset {when}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError(f"body truncated {when}")
    return UpstreamError(f"{type(exc).__name__} {when}")


class HttpReply:
    def __init__(self, resp: aiohttp.ClientResponse, idle: float | None, limit: int) -> None:
        self._resp = resp
        self._idle = idle  # None: aiohttp's sock_read already enforces the idle timeout
        self._limit = limit  # max_reply_bytes
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        try:
            return await read_limited(self._resp, self._limit)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc, "while reading the body") from None
        finally:
            self._resp.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        try:
            while True:
                if self._idle is None:
                    chunk = await content.readany()
                else:
                    async with asyncio.timeout(self._idle):
                        chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc, "mid-stream") from None

    def close(self) -> None:
        # Closing (not releasing) drops a half-read connection instead of reusing it.
        if not self._resp.closed:
            self._resp.close()


class HttpUpstream:
    """OpenAI-compatible providers: POST the body to base_url + path with the target's key."""

    def __init__(self, session: aiohttp.ClientSession, max_reply_bytes: int = 64 * 2**20) -> None:
        self.session = session
        self.max_reply_bytes = max_reply_bytes
        # Keyed by the Target object, not its id: a reload builds new targets, so a rotated
        # secret, new headers or timeouts apply from the next request, and the old entries
        # go with the old config.
        self._prepared_for: weakref.WeakKeyDictionary[Target, Prepared] = (
            weakref.WeakKeyDictionary()
        )

    def _prepared(self, target: Target) -> Prepared:
        """Headers and timeouts per target, built once.

        With first_byte_timeout == idle_timeout (the default) aiohttp's sock_read covers
        both, with no timer of ours per request; otherwise each gets its own.
        """
        prepared = self._prepared_for.get(target)
        if prepared is None:
            p = target.provider
            headers = {"Content-Type": "application/json", **p.headers}
            if target.key.secret:
                headers["Authorization"] = f"Bearer {target.key.secret}"
            timeout = aiohttp.ClientTimeout(
                total=p.timeout,
                connect=p.connect_timeout,
                sock_read=p.idle_timeout if p.idle_timeout == p.first_byte_timeout else None,
            )
            prepared = self._prepared_for[target] = (headers, timeout, tls.context(p))
        return prepared

    async def send(
        self, target: Target, path: str, body: bytes, stream: bool, client: Mapping[str, str]
    ) -> Reply:
        return await self.post(target, path, body, self._prepared(target)[0], stream)

    async def post(
        self, target: Target, path: str, body: bytes, headers: Mapping[str, str], stream: bool
    ) -> Reply:
        """The transport alone: any vendor's body and headers to base_url + path."""
        _, timeout, tls_context = self._prepared(target)
        url = target.provider.base_url + path
        post = self.session.post(url, data=body, headers=headers, timeout=timeout, ssl=tls_context)
        try:
            if timeout.sock_read is not None:
                resp = await post
            else:
                async with asyncio.timeout(target.provider.first_byte_timeout):
                    resp = await post
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translate(exc, "before response headers") from None
        idle = None if timeout.sock_read is not None else target.provider.idle_timeout
        return HttpReply(resp, idle, self.max_reply_bytes)
