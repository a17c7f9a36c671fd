"""ASGI middleware: the streaming body limit (413 on the bytes as they arrive, 408 when a body
stalls) and arrival announcements that let the micro-batcher wait for requests still reading
their body instead of closing a half-full batch.
"""

import asyncio
import time

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from paperops.serve.errors import error_response
from paperops.serve.state import ANNOUNCED_KEY, INFERENCE_PATHS, ServeState


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` once a body passes the limit; FastAPI re-raises HTTPExceptions
    from body reading, so it reaches the error handler as a 413 with the standard body."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413,
            f"the request body is larger than {limit} bytes (serve.limits.max_body_bytes)",
        )
        self.error_type = "body_too_large"
        self.loc = ["body"]


class BodyTimeout(StarletteHTTPException):
    """Raised from `receive` when the body has not fully arrived `timeout_s` after the request
    started (a slow or stalled client); 408, and the connection is closed after the answer."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {timeout_s:g} s "
            "(serve.limits.body_timeout_s); send it faster or in one piece",
            headers={"Connection": "close"},
        )
        self.error_type = "body_timeout"
        self.loc = ["body"]


class BodyLimitMiddleware:
    """413 for a body over `limit` bytes: at once from Content-Length, and while streaming for
    chunked bodies (or a Content-Length that lies), before the body is ever held whole.

    408 when the whole body has not arrived `timeout_s` after the request started: uvicorn has
    no body-read timeout (`timeout_keep_alive` only covers idle connections), so without it a
    client trickling a body byte by byte (slowloris) holds its connection, its task and the
    batcher's arrival count forever. The deadline is for the whole body, not per chunk, so
    trickling cannot extend it; reads after the body (disconnect checks) are not limited."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float | None = None) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.limit:
                    exc = BodyTooLarge(self.limit)
                    response = error_response(
                        413, [{"loc": ["body"], "msg": exc.detail, "type": exc.error_type}]
                    )
                    await response(scope, receive, send)
                    return
                break
        received = 0
        started = False
        body_done = self.timeout_s is None
        deadline = time.monotonic() + (self.timeout_s or 0.0)

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                message = await receive()
            else:
                try:  # asyncio.timeout: no extra task per receive (wait_for makes one)
                    async with asyncio.timeout(deadline - time.monotonic()):
                        message = await receive()
                except TimeoutError:
                    raise BodyTimeout(float(self.timeout_s or 0.0)) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
                body_done = body_done or not message.get("more_body", False)
            else:  # http.disconnect: nothing more will come
                body_done = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (BodyTooLarge, BodyTimeout) as exc:  # raised outside FastAPI's body reading
            if started:
                raise
            response = error_response(
                exc.status_code,
                [{"loc": ["body"], "msg": exc.detail, "type": exc.error_type}],
                headers=dict(exc.headers) if exc.headers else None,
            )
            await response(scope, receive, send)


class ArrivalsMiddleware:
    """Tells the batcher an inference request is on its way while its body is still being read,
    so it waits for a fuller batch only when that can pay off (see `MicroBatcher`)."""

    def __init__(self, app: ASGIApp, state: "ServeState") -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        batcher = self.state.batcher
        if (
            batcher is None
            or scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope.get("path") not in INFERENCE_PATHS
        ):
            await self.app(scope, receive, send)
            return
        batcher.announce()
        scope[ANNOUNCED_KEY] = batcher
        try:
            await self.app(scope, receive, send)
        finally:
            if scope.pop(ANNOUNCED_KEY, None) is not None:
                batcher.withdraw()
