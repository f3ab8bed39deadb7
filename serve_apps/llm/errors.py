"""OpenAI-style errors: every user mistake becomes a 4xx with `{"error": {...}}`, never a 500."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class OpenAIError(Exception):
    """An error with an HTTP status that the ingress turns into an OpenAI error body."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 400,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.status_code, param=self.param, code=self.code)

    def to_chunk(self) -> dict[str, Any]:
        """The form a server replica yields in place of output (exceptions do not cross Serve cleanly)."""
        return {"error": self.body()["error"], "status_code": self.status_code, "retry_after_s": self.retry_after_s}

    @classmethod
    def from_chunk(cls, chunk: dict[str, Any]) -> OpenAIError:
        error = chunk["error"]
        return cls(
            error["message"],
            status_code=chunk["status_code"],
            param=error.get("param"),
            code=error.get("code"),
            retry_after_s=chunk.get("retry_after_s"),
        )

    def to_response(self) -> JSONResponse:
        headers = {}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(self.retry_after_s)))
        return JSONResponse(self.body(), status_code=self.status_code, headers=headers)


def error_body(message: str, status_code: int, *, param: str | None = None, code: str | None = None) -> dict:
    error_type = _TYPES.get(status_code, "server_error" if status_code >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    if any(error.get("type") == "json_invalid" for error in errors):
        return "request body is not valid JSON", None
    unknown = [_location(error) for error in errors if error.get("type") == "extra_forbidden"]
    if unknown:  # name every unknown field at once, so one retry fixes them all
        return (f"unknown field(s) {', '.join(unknown)}: not part of the API this server implements "
                "(see the README's Model API section)"), unknown[0]
    first = errors[0]
    param = _location(first) or None
    message = first.get("msg", "invalid value")
    return (f"{param}: {message}" if param else message), param


def _location(error: dict[str, Any]) -> str:
    # pydantic reports unions as extra path parts (`tool_choice.NamedToolChoice.function`); keep the body's own.
    parts = [str(part) for part in error.get("loc", ()) if part != "body"]
    return ".".join(part for part in parts if not part[:1].isupper() and not part.startswith(("literal[", "str", "list[", "dict[")))


def install_error_handlers(app: FastAPI) -> None:
    """Map FastAPI's own errors (bad JSON, wrong types, unknown routes) and server faults to OpenAI error bodies."""

    @app.exception_handler(RequestValidationError)
    async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return JSONResponse(error_body(message, 400, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), exc.status_code), status_code=exc.status_code)

    @app.exception_handler(OpenAIError)
    async def _on_openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return exc.to_response()

    @app.exception_handler(Exception)
    async def _on_server_fault(request: Request, exc: Exception) -> JSONResponse:
        # A server fault, not the client's: the body says so, and front_door.FrontDoor logs the traceback once
        # (Starlette re-raises after answering).
        return JSONResponse(error_body("internal server error; the server's log has the traceback", 500),
                            status_code=500)
