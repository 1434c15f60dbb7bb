"""Fakes for issue 12's hostile inputs: huge upstream replies, a CONNECT proxy, TLS certificates."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from aiohttp import web

from tests.fakes import Action, Seen


def huge_reply(size: int, *, announce: bool) -> Action:
    """A JSON-labelled 200 of `size` bytes, written 1 MiB at a time (with Content-Length when
    `announce`, else chunked), so the fake itself never holds it whole."""

    async def action(request: web.Request, seen: Seen) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        if announce:
            resp.content_length = size
        await resp.prepare(request)
        block = b'{"pad": "' + b"x" * (2**20 - 11) + b'"}'
        try:
            for _ in range(size // len(block)):
                await resp.write(block)
            await resp.write(b" " * (size % len(block)))
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the router stopped reading, as it should
        return resp

    return action


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 that tunnels bytes and records each target."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            self.targets.append(target)
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def self_signed(directory: Path, name: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself (so it is its own CA), and its key."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={name}", "-addext", f"subjectAltName=IP:{name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
