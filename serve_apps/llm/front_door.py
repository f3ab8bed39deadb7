"""The ingress's front door: a pure ASGI layer in front of the FastAPI app.

Before FastAPI parses a byte it checks the API key (a client without one gets a 401 whatever it sends, never a
detailed 400) and caps the body (413, counted as it arrives, so a missing Content-Length does not help);
the docs routes answer only when asked for. An exception nothing handled is logged once with its traceback
and answered with a 500 OpenAI error body. Starlette's middleware would see the exception too late (its
ServerErrorMiddleware re-raises it after answering), hence a layer outside the app.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette._utils import get_route_path

from serve_apps.llm.errors import error_body

logger = logging.getLogger(__name__)

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPEN_PATHS = frozenset({"/health"})  # liveness probes carry no key


@dataclass(frozen=True, kw_only=True, slots=True)
class FrontDoorConfig:
    api_key: str | None
    max_request_body_bytes: int
    enable_docs: bool = False


def key_matches(authorization: bytes, api_key: str) -> bool:
    """`Bearer KEY`, compared as bytes in constant time (a str compare raises on non-ASCII header text)."""
    scheme, _, token = authorization.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), api_key.encode("utf-8"))


def _header(scope: dict, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


async def _send_error(send: Callable, status: int, message: str, *, code: str | None = None,
                      headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps(error_body(message, status, code=code)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class FrontDoor:
    def __init__(self, app: ASGIApp, config: FrontDoorConfig):
        self.app = app
        self.config = config

    def __getattr__(self, name: str) -> Any:  # Serve reads the wrapped app's attributes (add_exception_handler)
        return getattr(self.app, name)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = get_route_path(scope)
        if path in DOCS_PATHS and not self.config.enable_docs:
            return await _send_error(send, 404, "Not Found", code="not_found")
        if self.config.api_key is not None and path not in OPEN_PATHS | DOCS_PATHS:
            if not key_matches(_header(scope, b"authorization") or b"", self.config.api_key):
                return await _send_error(send, 401, "invalid or missing API key", code="invalid_api_key",
                                         headers=((b"www-authenticate", b"Bearer"),))
        limit = self.config.max_request_body_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await _send_error(send, 413, self._too_large(declared.decode("latin-1")), code="body_too_large")
        body = await self._read_body(receive, limit)
        if body is None:
            return await _send_error(send, 413, self._too_large(f"over {limit}"), code="body_too_large")
        await self._call_app(scope, _replay(body, receive), send)

    def _too_large(self, size: str) -> str:
        return (f"request body is {size} bytes; this server takes at most {self.config.max_request_body_bytes} "
                "(LLMServingArgs.max_request_body_bytes)")

    @staticmethod
    async def _read_body(receive: Callable, limit: int) -> bytes | None:
        """The whole body, or None once it passes `limit` (the rest is never read)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: the app sees an empty body and stops
                return b""
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _call_app(self, scope: dict, receive: Callable, send: Callable) -> None:
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:  # the one place an unhandled error is logged; nothing above re-raises it
            logger.exception("unhandled error in %s %s", scope.get("method"), get_route_path(scope))
            if not started:
                await _send_error(send, 500, "internal server error; the server's log has the traceback")


def _replay(body: bytes, receive: Callable) -> Callable[[], Awaitable[dict]]:
    """A receive that hands the app the body already read, then the client's later messages (disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> dict:
        return pending.pop() if pending else await receive()

    return replayed
