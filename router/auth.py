"""Client authentication: bearer tokens or `x-api-key`, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from router.config import ClientKey
from router.errors import Unauthorized

ANONYMOUS = "anonymous"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class Authenticator:
    """Maps an Authorization header (or, without one, `x-api-key`, as Anthropic's clients
    send it) to a client key name, or raises Unauthorized.

    Tokens are hashed first, so every comparison is over 32 bytes and the time taken
    says nothing about a key's length or prefix; every key is compared, match or not.
    """

    def __init__(self, keys: tuple[ClientKey, ...]) -> None:
        self.required = bool(keys)
        self._keys = [(_digest(k.key), k.name) for k in keys]

    def check(self, header: str | None, api_key: str | None = None) -> str:
        if not self.required:
            return ANONYMOUS
        scheme, _, token = (header or "").strip().partition(" ")
        if not header and api_key and api_key.strip():
            scheme, token = "bearer", api_key
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(
                "Missing API key: send 'Authorization: Bearer <your router key>' "
                "or 'x-api-key: <your router key>'."
            )
        presented = _digest(token.strip())
        found = None
        for digest, name in self._keys:
            if hmac.compare_digest(presented, digest) and found is None:
                found = name
        if found is None:
            raise Unauthorized("Incorrect API key provided.")
        return found
