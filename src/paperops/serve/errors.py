"""Errors the API answers with: `ApiError` and the handlers that give every 4xx/5xx the shape
`{"error": "<one line>", "detail": [{"loc", "msg", "type"}]}`, so a client can always point at
the field and the rule.
"""

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    """A deliberate non-2xx answer with the standard error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        loc: Sequence[str | int] = (),
        type_: str = "error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = [{"loc": list(loc), "msg": message, "type": type_}]
        self.headers = headers


def error_response(
    status: int,
    detail: list[dict[str, Any]],
    summary: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The one error body of the API: `{"error": summary, "detail": [{loc, msg, type}]}`."""
    if summary is None:
        parts = []
        for item in detail[:3]:
            loc = [x for x in item["loc"] if x != "body"]
            # a field path ("papers.0.title"), not a bare character position of a JSON error
            where = ".".join(str(x) for x in loc) if any(isinstance(x, str) for x in loc) else ""
            parts.append(f"{where}: {item['msg']}" if where else item["msg"])
        summary = "; ".join(parts) + (f" (+{len(detail) - 3} more)" if len(detail) > 3 else "")
    return JSONResponse({"error": summary, "detail": detail}, status_code=status, headers=headers)


def _clean_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic/FastAPI errors without `input` (it can be a whole abstract, or bytes) and `ctx`
    objects; a JSON syntax error gets its position and reason in words."""
    out = []
    for e in errors:
        loc = [x if isinstance(x, int | str) else str(x) for x in e.get("loc", ())]
        msg = str(e.get("msg", "invalid value"))
        ctx = e.get("ctx") or {}
        if e.get("type") == "json_invalid" and ctx.get("error"):
            msg = f"malformed JSON at character {loc[-1] if loc else '?'}: {ctx['error']}"
        out.append({"loc": loc, "msg": msg, "type": str(e.get("type", "value_error"))})
    return out


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _clean_errors(exc.errors())
        content_type = request.headers.get("content-type")
        if (
            not _is_json(content_type)
            and request.method in ("POST", "PUT", "PATCH")
            and any(e["loc"] == ["body"] for e in errors)
        ):
            msg = "Content-Type must be application/json" + (
                f" (got {content_type!r})" if content_type else " (none was sent)"
            )
            return error_response(
                415, [{"loc": ["header", "content-type"], "msg": msg, "type": "content_type"}]
            )
        return error_response(422, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cause = exc.__cause__
        if exc.status_code == 400 and isinstance(cause, UnicodeDecodeError):
            msg = f"the body is not valid UTF-8 (byte {cause.start}: {cause.reason})"
            return error_response(
                422, [{"loc": ["body", cause.start], "msg": msg, "type": "utf8_invalid"}]
            )
        if exc.status_code == 400 and isinstance(cause, RecursionError | ValueError):
            msg = f"the body could not be parsed as JSON ({type(cause).__name__}: {cause})"[:300]
            return error_response(422, [{"loc": ["body"], "msg": msg, "type": "json_invalid"}])
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path} (see /docs)"
        kind = getattr(exc, "error_type", f"http_{exc.status_code}")
        return error_response(
            exc.status_code,
            [{"loc": list(getattr(exc, "loc", [])), "msg": detail, "type": kind}],
            headers=dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.detail, exc.message, exc.headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        """A bug, not bad input: the standard body (uvicorn still logs the traceback)."""
        msg = f"internal error ({type(exc).__name__}); see the server log"
        return error_response(500, [{"loc": [], "msg": msg, "type": "internal_error"}])
