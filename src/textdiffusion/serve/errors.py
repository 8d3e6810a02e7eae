"""How the server says no: its exceptions, the HTTP status of each, and OpenAI-shaped error
bodies (``{"error": {"message", "type", "param", "code"}}``). No web framework at import."""

from __future__ import annotations

import logging
import traceback

from ..errors import TextDiffusionError, first_line
from .requests import BadRequest

log = logging.getLogger("textdiffusion.serve")


class QueueFull(TextDiffusionError):
    """The queue holds as many requests as it may (HTTP 429)."""


class RequestTimeout(TextDiffusionError):
    """A request ran past its deadline (HTTP 408)."""


class Cancelled(TextDiffusionError):
    """The client went away, or the server stopped (HTTP 503)."""


def status_of(exc: BaseException) -> int:
    if isinstance(exc, BadRequest):
        return exc.status
    if isinstance(exc, QueueFull):
        return 429
    if isinstance(exc, RequestTimeout):
        return 408
    if isinstance(exc, Cancelled):
        return 503
    if isinstance(exc, (TextDiffusionError, UnicodeError)):
        return 400
    return 500


def error_body(message: str, status: int, param: str | None = None) -> dict:
    kind = {401: "authentication_error", 404: "not_found_error", 408: "timeout", 413: "invalid_request_error",
            429: "rate_limit_error", 503: "service_unavailable"}.get(status, "invalid_request_error")
    if status >= 500 and status != 503:
        kind = "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def internal_error(exc: BaseException, rid: str) -> str:
    """The message of a 500: a bug, named with the request id its log line carries."""
    return f"internal error (a bug, please report it): {type(exc).__name__}: {first_line(exc, default='')} [request {rid}]"


def answer(status: int, message: str, param: str | None = None, headers: dict | None = None):
    """An error response: its status and OpenAI-shaped body."""
    from starlette.responses import JSONResponse

    return JSONResponse(error_body(message, status, param), status_code=status, headers=headers)


def error_response(exc: BaseException, rid: str):
    """The response to a request that failed with ``exc``: a 4xx naming the problem, or a 500 for a
    bug (logged with its traceback)."""
    status = status_of(exc)
    if status == 500:
        log.error("%s internal error\n%s", rid, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        return answer(500, internal_error(exc, rid))
    headers = {"retry-after": "1"} if status == 429 else None
    return answer(status, first_line(exc), getattr(exc, "param", None), headers)


def stream_error(exc: BaseException) -> dict:
    """The error body a stream ends with (its HTTP status was sent already)."""
    status = status_of(exc)
    message = first_line(exc) if status != 500 else f"internal error: {first_line(exc, default='')}"
    return error_body(message, status)
