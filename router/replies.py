"""Reading a non-streamed upstream reply whole, but never more than `max_reply_bytes`."""

from __future__ import annotations

import aiohttp

from router.errors import UpstreamError


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body; past `limit` bytes (as announced, or as read) an UpstreamError naming the
    limit, with the connection dropped rather than read any further."""
    if resp.content_length is not None and resp.content_length > limit:
        resp.close()
        raise too_large(limit)
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            parts.clear()
            resp.close()
            raise too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def too_large(limit: int) -> UpstreamError:
    return UpstreamError(f"reply larger than max_reply_bytes ({limit} bytes)")
