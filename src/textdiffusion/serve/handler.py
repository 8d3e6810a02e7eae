"""The POST endpoints (``requests.ENDPOINTS``): read and check the body, build the task, submit
it to the scheduler, then answer: one JSON body when the rows are done, or a stream
(streaming.py). The server's pieces are read from ``request.app.state`` (app.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from starlette.requests import Request

from .batch import Job
from .errors import answer, error_response
from .requests import ENDPOINTS, BadRequest, parse
from .streaming import Stream
from .tasks import build_task, respond

log = logging.getLogger("textdiffusion.serve")


async def read_body(request: Request, limit: int) -> dict:
    """The JSON body, refused (413) once it passes ``limit`` bytes, whatever Content-Length said."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the request body is over the server's limit of {limit:,} bytes "
                             f"(--max-body-bytes)", status=413)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("the request body nests too deeply to read") from None


async def endpoint(request: Request):
    """Any POST endpoint: which one is the request's path."""
    from starlette.responses import JSONResponse, StreamingResponse

    state, rid = request.app.state, request.state.rid
    cfg, kind = state.settings, ENDPOINTS[request.url.path]
    try:
        body = await read_body(request, cfg.max_body)
        p = parse(body, kind, context=state.pipe.run.cfg.model.context, max_steps=cfg.max_steps)
        if p.model is not None and p.model != cfg.name:
            raise BadRequest(f"no model {p.model!r}: this server serves {cfg.name!r}", "model", status=404)
        task, commit, seed = build_task(state.pipe, p)
    except Exception as exc:  # noqa: BLE001
        return error_response(exc, rid)
    loop = asyncio.get_running_loop()
    updates: asyncio.Queue = asyncio.Queue()

    def notify(what, payload):  # called from the scheduler thread
        loop.call_soon_threadsafe(updates.put_nowait, (what, payload))  # (RuntimeError once the loop closed)

    job = Job(task, notify, watch=p.stream, frames=p.include_denoising, commit=commit,
              deadline=time.monotonic() + cfg.timeout, id=rid)
    try:
        state.scheduler.submit(job)
    except Exception as exc:  # noqa: BLE001
        return error_response(exc, rid)
    meta = {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
            "model": cfg.name, "seed": seed}
    if p.stream:
        stream = Stream(job, updates, p, meta, task, state.scheduler, state.pipe.run)
        return StreamingResponse(stream.events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
    what, payload = await wait(request, job, updates)
    if what == "error":
        return error_response(payload, rid)
    if what == "response":
        return payload
    result, usage = payload
    return JSONResponse(respond(kind, p, result, usage, task, meta, state.pipe.run))


async def wait(request: Request, job: Job, updates: asyncio.Queue) -> tuple[str, object]:
    """The job's end: ("done", (result, usage)), ("error", exc), or ("response", an error response)
    when the client went away or the scheduler stopped (the job is dropped)."""
    scheduler = request.app.state.scheduler
    while True:
        try:
            what, payload = await asyncio.wait_for(updates.get(), 0.25)
        except asyncio.TimeoutError:
            if not scheduler.alive or time.monotonic() > job.deadline + 5:  # never wait on a dead thread
                scheduler.cancel(job)
                return "response", answer(503, "the server could not finish the request (its scheduler stopped)")
            if await request.is_disconnected():
                scheduler.cancel(job)
                log.info("%s client went away: its rows leave the batch", request.state.rid)
                return "response", answer(499, "client closed the request")
            continue
        if what != "step":
            return what, payload
