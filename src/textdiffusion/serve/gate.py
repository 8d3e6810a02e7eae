"""What every request passes before an endpoint: its id (the client's ``X-Request-Id`` if sane,
else a new one, echoed in the response), the API key, refusals while draining, the declared body
size, a 500 for a bug the endpoint let through, the count /metrics reports, and a log line.

Plain ASGI (not BaseHTTPMiddleware), so a client that disconnects is seen by the endpoint and
its rows leave the batch."""

from __future__ import annotations

import hmac
import logging
import re
import time
import traceback
import uuid

from .errors import answer, internal_error
from .requests import ENDPOINTS

log = logging.getLogger("textdiffusion.serve")

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Gate:
    """ASGI middleware around ``inner``; ``state`` is the app's state (settings, draining, scheduler)."""

    def __init__(self, inner, state):
        self.inner, self.state = inner, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given_id = headers.get("x-request-id", "")
        rid = given_id if REQUEST_ID.fullmatch(given_id) else uuid.uuid4().hex[:16]  # a client's id, if sane
        scope.setdefault("state", {})["rid"] = rid
        path, method, start, seen = scope["path"], scope["method"], time.monotonic(), {}

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        refusal = self.refusal(path, method, headers)
        try:
            await (refusal or self.inner)(scope, receive, send_with_id)
        except Exception as exc:  # noqa: BLE001 (a bug: logged with its traceback, answered as one)
            log.error("%s %s %s: internal error\n%s", rid, method, path, traceback.format_exc())
            if "status" not in seen:
                await answer(500, internal_error(exc, rid))(scope, receive, send_with_id)
        status = seen.get("status", 0)
        self.state.scheduler.metrics.answered(path if path in (*ENDPOINTS, "/v1/models") else "other", status)
        log.info("%s %s %s %d %.3fs", rid, method, path, status, time.monotonic() - start)

    def refusal(self, path: str, method: str, headers: dict):
        """The response refusing this request before its endpoint runs (401, 503, 413), or None."""
        cfg = self.state.settings
        if (path.startswith("/v1/") or path == "/metrics") and cfg.api_key is not None and method != "OPTIONS":
            given = headers.get("authorization", "").encode("latin-1")  # the header's own bytes
            if not hmac.compare_digest(given, f"Bearer {cfg.api_key}".encode()):
                return answer(401, "missing or wrong API key: send Authorization: Bearer KEY")
        if path in ENDPOINTS and method == "POST":
            declared = headers.get("content-length", "")
            if self.state.draining:
                return answer(503, "the server is shutting down")
            if declared.isdigit() and int(declared) > cfg.max_body:
                return answer(413, f"the request body is {int(declared):,} bytes, over the server's limit "
                                   f"of {cfg.max_body:,} (--max-body-bytes)")
        return None
