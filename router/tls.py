"""TLS for upstream calls: the system's trust store, plus a private CA, or no checks at all."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.config import Provider


def check_ca_file(path: str) -> str | None:
    """Why `path` cannot serve as a CA bundle, or None when it can."""
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except ssl.SSLError:  # (an OSError too: first)
        return "holds no PEM certificate"
    except OSError as exc:
        return f"cannot read: {exc.strerror or 'no such file'}"
    return None


def context(provider: Provider) -> ssl.SSLContext | bool:
    """What aiohttp's `ssl=` takes for this provider: True keeps its default verification."""
    if not provider.verify_tls:
        return False
    if provider.ca_file is None:
        return True
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cafile=provider.ca_file)
    return ctx
