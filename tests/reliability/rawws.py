"""A bare-bones WebSocket client on a raw socket: every byte of the handshake is the test's to choose.

The libraries' own clients validate (and the instrumented ones add to) what they send; hostile
handshakes, missing pongs and TCP resets need a client that does neither.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import struct
from types import TracebackType
from typing import Optional, Sequence
from urllib.parse import urlsplit


__all__ = ["RawClient", "RawServer", "frame"]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked, unfragmented client frame."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawClient:
    """One connection: a hand-written upgrade request, then frames in and out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: list[tuple[str, str]] = []

    @classmethod
    async def connect(
        cls,
        url: str,
        headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
        *,
        target: Optional[bytes] = None,
    ) -> RawClient:
        """Send the upgrade request with ``headers`` added verbatim, and read the response head."""
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        path = target if target is not None else (parts.path or "/").encode()
        key = base64.b64encode(os.urandom(16))
        lines = [
            b"GET " + path + b" HTTP/1.1",
            f"Host: {parts.hostname}:{parts.port}".encode(),
            b"Upgrade: websocket",
            b"Connection: Upgrade",
            b"Sec-WebSocket-Key: " + key,
            b"Sec-WebSocket-Version: 13",
            *(name + b": " + value for name, value in headers),
        ]
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
        await writer.drain()
        client = cls(reader, writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except BaseException:  # no response (the server dropped the connection): nothing is left open
            await client.close()
            raise
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        client.status = int(status_line.split(" ")[1])
        for line in header_lines:
            if ":" in line:
                name, _, value = line.partition(":")
                client.headers.append((name.strip().lower(), value.strip()))
        return client

    def header(self, name: str) -> Optional[str]:
        return next((v for k, v in self.headers if k == name), None)

    async def send(self, payload: bytes | str, opcode: Optional[int] = None) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self.writer.write(frame(data, opcode if opcode is not None else (0x1 if isinstance(payload, str) else 0x2)))
        await self.writer.drain()

    async def recv_frame(self, timeout: float = 10) -> tuple[int, bytes]:
        """The next frame from the server (unmasked): ``(opcode, payload)``."""
        b0, b1 = await asyncio.wait_for(self.reader.readexactly(2), timeout)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return b0 & 0x0F, await self.reader.readexactly(n)

    async def recv(self, timeout: float = 10) -> bytes:
        """The next data frame's payload, skipping pings (which are not answered: no pong is ever sent)."""
        while True:
            opcode, payload = await self.recv_frame(timeout)
            if opcode in (0x1, 0x2):
                return payload
            if opcode == 0x8:
                raise ConnectionError(f"close frame {payload!r}")

    def reset(self) -> None:
        """Vanish: abort with a TCP RST, no close frame."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close_cleanly(self, timeout: float = 5) -> None:
        """The closing handshake (1000), then the socket."""
        try:
            self.writer.write(frame(struct.pack("!H", 1000), 0x8))
            await self.writer.drain()
            while (await self.recv_frame(timeout))[0] != 0x8:
                pass
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        await self.close()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def _server_frame(payload: bytes, opcode: int) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


async def _read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
    data = await reader.readexactly(n)
    return b0 & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class RawServer:
    """A hostile server: it agrees to the envelope, then answers message ``i`` with ``replies[i]``, bare.

    Each client message must be a decimal index (possibly enveloped, as an instrumented client sends
    it); the reply goes out exactly as given, as a text frame for ``str`` and binary for ``bytes``,
    so whatever the client's application receives is the client instrumentation's doing.
    """

    def __init__(self, replies: Sequence[str | bytes]) -> None:
        self.replies = list(replies)
        self._server: Optional[asyncio.AbstractServer] = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def __aexit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from wstrace import envelope as codec  # noqa: PLC0415 - only this server decodes

        try:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest())
            lines = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: Upgrade"]
            lines.append(b"Sec-WebSocket-Accept: " + accept)
            if headers.get("wstrace-envelope") == "frame/1":
                lines.append(b"wstrace-envelope: frame/1")
            writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
            await writer.drain()
            while True:
                opcode, data = await _read_client_frame(reader)
                if opcode == 0x8:
                    writer.write(_server_frame(data[:2], 0x8))
                    await writer.drain()
                    return
                if opcode == 0x9:
                    writer.write(_server_frame(data, 0xA))
                elif opcode in (0x1, 0x2):
                    index = int(codec.decode(data).payload)
                    reply = self.replies[index]
                    if isinstance(reply, str):
                        writer.write(_server_frame(reply.encode("utf-8"), 0x1))
                    else:
                        writer.write(_server_frame(reply, 0x2))
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


class VanishingServer(RawServer):
    """A server that agrees to nothing, answers the first message with ``chunks`` bare text frames, then vanishes.

    It resets the TCP connection (no close frame) ``linger`` seconds after the last chunk, and never
    answers a ping when ``pong`` is false (then it also never vanishes: the client has to give up).
    With ``stall`` it reads nothing at all after the handshake, and resets after ``linger`` seconds.
    """

    def __init__(self, chunks: int = 3, *, pong: bool = True, linger: float = 0.05, stall: bool = False) -> None:
        super().__init__(())
        self.chunks = chunks
        self.pong = pong
        self.linger = linger
        self.stall = stall
        """Read nothing after the handshake (the client's sends back up into its buffers), then reset."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            key = next(
                line.partition(b":")[2].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            if self.stall:
                await asyncio.sleep(self.linger)
                _reset(writer)
                return
            while True:
                opcode, data = await _read_client_frame(reader)
                if opcode == 0x9 and self.pong:
                    writer.write(_server_frame(data, 0xA))
                elif opcode in (0x1, 0x2) and self.pong:
                    for i in range(self.chunks):
                        writer.write(_server_frame(f"chunk {i}".encode(), 0x1))
                    await writer.drain()
                    await asyncio.sleep(self.linger)
                    _reset(writer)
                    return
        except (OSError, asyncio.IncompleteReadError):
            writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST: no close frame, no FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
