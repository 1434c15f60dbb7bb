"""Response compression: br or gzip by Accept-Encoding q-values, whole bodies or per event."""

from __future__ import annotations

import functools
import zlib

import brotli

_BR_QUALITY = 4  # brotli's default 11 costs far more CPU than a proxy should spend
_GZIP_LEVEL = 5


@functools.lru_cache(maxsize=256)
def negotiate(accept_encoding: str) -> str | None:
    """Pick "br" or "gzip" (highest q wins, ties to br), or None for identity."""
    q: dict[str, float] = {}
    for part in accept_encoding.lower().split(","):
        name, _, params = part.strip().partition(";")
        weight = 1.0
        for param in params.split(";"):
            k, _, v = param.strip().partition("=")
            if k == "q":
                try:
                    weight = float(v)
                except ValueError:
                    weight = 0.0
        if name:
            q[name] = weight
    star = q.get("*")
    scores = {enc: q.get(enc, star if star is not None else 0.0) for enc in ("br", "gzip")}
    best = max(scores, key=lambda enc: scores[enc])  # dict order puts br first on ties
    return best if scores[best] > 0 else None


def compress(data: bytes, encoding: str) -> bytes:
    if encoding == "br":
        return bytes(brotli.compress(data, quality=_BR_QUALITY))
    return gzip_compress(data)


def gzip_compress(data: bytes) -> bytes:
    c = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


class StreamCompressor:
    """Compresses a stream piece by piece, flushing after each so every event goes out now."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        if encoding == "br":
            self._br = brotli.Compressor(quality=_BR_QUALITY)
        else:
            self._gz = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)

    def feed(self, data: bytes) -> bytes:
        if self.encoding == "br":
            return bytes(self._br.process(data) + self._br.flush())
        return self._gz.compress(data) + self._gz.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        if self.encoding == "br":
            return bytes(self._br.finish())
        return self._gz.flush(zlib.Z_FINISH)
