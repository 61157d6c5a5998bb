"""One traced ASGI connection: the ``receive`` and ``send`` callables the application gets.

The application awaits them in its own task, so a receive span that
``received`` attaches there is current while the application handles the
message (Starlette's ``receive_text()`` and friends await ``receive`` directly).
"""

from __future__ import annotations

from typing import Optional

from wstrace._close import asgi_close, asgi_disconnect
from wstrace._context import Attachment, attach, detach
from wstrace.connection import ConnectionTracer
from wstrace.instrumentation._instrumentor import end_after
from wstrace.instrumentation.asgi._common import (
    ASGIApp,
    Message,
    Receive,
    Send,
    current_task,
)
from wstrace.instrumentation.asgi._server import Handshake, denial_status


__all__ = ["Connection"]


class Connection:
    """Translates one connection's ASGI events into core events, in both directions."""

    __slots__ = ("_attached", "_hs", "_receive", "_send", "_task")

    def __init__(self, handshake: Handshake, receive: Receive, send: Send) -> None:
        self._hs = handshake
        self._receive = receive
        self._send = send
        self._task = current_task()
        self._attached: Optional[Attachment] = None

    async def run(self, app: ASGIApp) -> None:
        error: Optional[BaseException] = None
        try:
            await app(self._hs.scope, self.receive, self.send)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._finish(error)

    # Inbound -------------------------------------------------------------------

    async def receive(self) -> Message:
        hs = self._hs
        if hs.open and hs.ct is not None:
            hs.ct.receive_done()  # the application is done with the last message
        message = await self._receive()
        kind = message.get("type")
        if kind == "websocket.receive":
            ct = hs.ct
            if ct is not None and hs.open:
                return _received(ct, message)
        elif kind == "websocket.connect":
            if hs.ct is None:
                hs.connected()
        elif kind == "websocket.disconnect":
            self._disconnected(message)
        return message

    def _disconnected(self, message: Message) -> None:
        hs = self._hs
        if not hs.open:
            hs.refused(None)  # the peer left before the application answered
        elif not hs.ended and hs.ct is not None:
            asgi_disconnect(hs.ct, message)
            self._end()

    # Outbound ------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        hs = self._hs
        if kind == "websocket.send":
            ct = hs.ct
            if ct is not None and hs.open:
                # Even after the close is recorded: the core still applies a negotiated envelope.
                await self._send_data(ct, message)
            else:
                await self._send(message)
        elif kind == "websocket.accept" and not hs.open and not hs.ended:
            accept = hs.accept_message(message)
            await self._send_answer(accept, None)
            hs.accepted(accept)
            self._enter_connection()
        elif kind == "websocket.close" and hs.open and not hs.ended:
            await self._send_close(message)
        elif kind in ("websocket.close", "websocket.http.response.start") and not hs.open and not hs.ended:
            # ASGI: a close before accept is refused with 403; a denial response has its own status.
            status = 403 if kind == "websocket.close" else denial_status(message)
            hs.tracer()
            await self._send_answer(message, status)
            hs.refused(status)
        else:
            await self._send(message)

    async def _send_answer(self, message: Message, status: Optional[int]) -> None:
        """Send the application's answer to the handshake; if that fails, the handshake is refused with
        ``status`` (``None`` where there is none) and the error."""
        try:
            await self._send(message)
        except BaseException as exc:
            self._hs.refused(status, exc)
            raise

    async def _send_data(self, ct: ConnectionTracer, message: Message) -> None:
        # Servers send ``bytes`` when both keys are set (uvicorn does), so check it first.
        data = message.get("bytes")
        if data is not None:
            key, payload, is_text = "bytes", data, False
        else:
            text = message.get("text")
            if text is None:
                await self._send(message)
                return
            key, payload, is_text = "text", text, True
        wire, handle = ct.send_start(payload, text=is_text)
        if wire is not payload:
            message = dict(message)
            message[key] = wire
        try:
            await end_after(ct, handle, self._send(message))
        except OSError as exc:
            self._lost(exc)
            raise

    async def _send_close(self, message: Message) -> None:
        ct = self._hs.ct
        if ct is not None:
            ct.receive_done()  # in the application's context, where the receive span was attached
        try:
            await self._send(message)
        except BaseException as exc:
            if isinstance(exc, OSError):
                self._lost(exc)
            else:
                self._end(message, error=exc)
            raise
        self._end(message)

    # Connection lifetime -------------------------------------------------------

    def _enter_connection(self) -> None:
        """In the connection model, make the connection span current in the application's task.

        Only in the task that called the middleware, which it outlives; the
        token is reset when the application returns.
        """
        ct = self._hs.ct
        ctx = ct.connection_context if ct is not None else None
        if ctx is not None and self._task is not None and current_task() is self._task:
            self._attached = attach(ctx)

    def _lost(self, error: BaseException) -> None:
        """The server could not write: the TCP connection is gone (uvicorn raises ``ClientDisconnected``)."""
        self._end(error=error)

    def _end(
        self, close: Optional[Message] = None, *, error: Optional[BaseException] = None, local_end: bool = False
    ) -> None:
        """Record the end once; ``close`` is the application's ``websocket.close`` event, if it sent one."""
        hs = self._hs
        if hs.ended or hs.ct is None:
            return
        hs.ended = True
        if close is not None:
            asgi_close(hs.ct, close)
        hs.ct.closed(error=error, local_end=local_end)

    def _finish(self, error: Optional[BaseException]) -> None:
        """The application returned or raised: whatever was not recorded yet ends now."""
        hs = self._hs
        if not hs.open:
            if not hs.ended:
                hs.abandoned(error)
        else:
            ct = hs.ct
            if ct is not None:
                ct.receive_done(error)  # an exception escaping the app ends the message it was handling
            # Returning without a close: the server drops the connection for the application, on purpose.
            self._end(error=error, local_end=True)
        attached, self._attached = self._attached, None
        detach(attached)


def _received(ct: ConnectionTracer, message: Message) -> Message:
    """Strip the envelope and start the receive span; the application gets a copy with the payload."""
    text = message.get("text")
    if text is not None:
        key, wire = "text", text
    else:
        key, wire = "bytes", message.get("bytes")
        if wire is None:
            return message
    payload = ct.received(wire)
    if payload is wire:
        return message
    copy = dict(message)
    copy[key] = payload
    return copy
