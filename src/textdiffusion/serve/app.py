"""The HTTP side of ``textdiffusion serve``: an OpenAI-compatible FastAPI app over the
step-batching scheduler (scheduler.py).

    GET  /v1/models                  the served model
    POST /v1/completions             continue a prompt (``suffix``: fill in the middle)
    POST /v1/chat/completions        instruction-tuned runs (train --sft); others answer 400
    POST /v1/fim/completions         prompt + suffix: the middle
    POST /v1/infill                  a template with [MASK], [MASK:n], [MASK:a-b] holes
    POST /v1/edit                    rewrite a span of a text at a strength
    GET  /health, /ready, /metrics   liveness, readiness (503 while draining), Prometheus text

Diffusion settings are top-level body fields (requests.py). ``stream: true`` sends committed
text only (the finished prefix: it only grows, and ends as the final text); with
``stream_options: {"include_denoising": true}`` every step also comes as an ``event:
diffusion_frame`` server-sent event whose ``diffusion_frame`` is a trace-v1 frame (docs/trace-format.md)
and ``diffusion_texts`` the canvas with masks shown. Errors are OpenAI-shaped JSON
(``{"error": {"message", "type", "param", "code"}}``) with a 4xx status for bad input.
"""


import asyncio
import hmac
import json
import logging
import re
import secrets
import time
import traceback
import uuid
from dataclasses import dataclass, field

from ..errors import TextDiffusionError, first_line
from .requests import BadRequest, Parsed, parse
from .scheduler import Cancelled, Job, QueueFull, RequestTimeout, Scheduler

log = logging.getLogger("textdiffusion.serve")

PING_SECONDS = 15.0
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat", "/v1/fim/completions": "fim",
             "/v1/infill": "infill", "/v1/edit": "edit"}


@dataclass
class Settings:
    """How the server runs (``textdiffusion serve`` flags)."""

    name: str = "model"  # the model id clients pass
    api_key: str | None = None
    max_batch: int = 32  # rows in one network call
    max_queue: int = 64  # requests waiting
    max_steps: int = 1024
    max_body: int = 1 << 20  # bytes
    timeout: float = 300.0  # seconds a request may take, queue included
    cors: tuple[str, ...] = ()
    batching: bool = True
    scheduler_thread: bool = True  # run the scheduler in a thread of its own (False: the caller drives it)
    counts: dict = field(default_factory=dict)  # (endpoint, status) -> requests answered


def error_body(message: str, status: int, param: str | None = None) -> dict:
    kind = {401: "authentication_error", 404: "not_found_error", 408: "timeout", 413: "invalid_request_error",
            429: "rate_limit_error", 503: "service_unavailable"}.get(status, "invalid_request_error")
    if status >= 500 and status != 503:
        kind = "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def internal_error(exc: BaseException, rid: str) -> str:
    """The message of a 500: a bug, named with the request id its log line carries."""
    return f"internal error (a bug, please report it): {type(exc).__name__}: {first_line(exc, default='')} [request {rid}]"


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


def create_app(pipe, settings: Settings | None = None):
    """The FastAPI app serving ``pipe`` (a ``Pipeline``) with ``settings``."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    cfg = settings or Settings()
    run = pipe.run
    scheduler = Scheduler(run, max_batch=cfg.max_batch, max_queue=cfg.max_queue, batching=cfg.batching)
    context = run.cfg.model.context

    @asynccontextmanager
    async def lifespan(app):
        if cfg.scheduler_thread:
            scheduler.start()
        app.state.draining = False
        yield
        scheduler.stop()

    app = FastAPI(title="textdiffusion", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler, app.state.settings, app.state.draining = scheduler, cfg, False

    def answer(status: int, message: str, param: str | None = None, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(error_body(message, status, param), status_code=status, headers=headers)

    class Gate:
        """Request ids, the API key, draining and the declared body size, before any endpoint; a
        log line per request. Plain ASGI (not BaseHTTPMiddleware), so a client that disconnects
        is seen by the endpoint and its rows leave the batch."""

        def __init__(self, inner):
            self.inner = inner

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

            refusal = None
            if (path.startswith("/v1/") or path == "/metrics") and cfg.api_key is not None and method != "OPTIONS":
                given = headers.get("authorization", "").encode("latin-1")  # the header's own bytes
                if not hmac.compare_digest(given, f"Bearer {cfg.api_key}".encode()):
                    refusal = answer(401, "missing or wrong API key: send Authorization: Bearer KEY")
            if refusal is None and path in ENDPOINTS and method == "POST":
                declared = headers.get("content-length", "")
                if app.state.draining:
                    refusal = answer(503, "the server is shutting down")
                elif declared.isdigit() and int(declared) > cfg.max_body:
                    refusal = answer(413, f"the request body is {int(declared):,} bytes, over the server's limit "
                                          f"of {cfg.max_body:,} (--max-body-bytes)")
            try:
                if refusal is not None:
                    await refusal(scope, receive, send_with_id)
                else:
                    await self.inner(scope, receive, send_with_id)
            except Exception as exc:  # noqa: BLE001 (a bug: logged with its traceback, answered as one)
                log.error("%s %s %s: internal error\n%s", rid, method, path, traceback.format_exc())
                if "status" not in seen:
                    await answer(500, internal_error(exc, rid))(scope, receive, send_with_id)
            status = seen.get("status", 0)
            key = (path if path in (*ENDPOINTS, "/v1/models") else "other", status)
            cfg.counts[key] = cfg.counts.get(key, 0) + 1
            log.info("%s %s %s %d %.3fs", rid, method, path, status, time.monotonic() - start)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        return answer(exc.status_code, str(exc.detail))

    async def read_body(request: Request) -> dict:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.max_body:
                raise BadRequest(f"the request body is over the server's limit of {cfg.max_body:,} bytes "
                                 f"(--max-body-bytes)", status=413)
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the request body is not JSON: {exc}") from None
        except RecursionError:
            raise BadRequest("the request body nests too deeply to read") from None

    def model_card() -> dict:
        return {"id": cfg.name, "object": "model", "created": int(_created(run)), "owned_by": "textdiffusion",
                "process": run.process.name, "context": context,
                "chat": bool(run.cfg.data.sft), "labels": list(run.labels or []),
                "draft": None if getattr(pipe, "drafter", None) is None else str(pipe.drafter.run_dir)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name}")
    async def one_model(name: str):
        if name != cfg.name:
            return answer(404, f"no model {name!r}: this server serves {cfg.name!r}", "model")
        return model_card()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        if not scheduler.alive:
            return answer(503, "the scheduler is not running: the server cannot generate (see its log)")
        if app.state.draining:
            return answer(503, "draining: the server is finishing its requests before it stops")
        return {"status": "ready", "queue": scheduler.queue_depth, "running": scheduler.running}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(prometheus(cfg, scheduler), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    async def demo():
        from .demo import page

        return page(cfg.name, run)

    async def endpoint(request: Request):
        kind = ENDPOINTS[request.url.path]
        try:
            body = await read_body(request)
            p = parse(body, kind, context=context, max_steps=cfg.max_steps)
            if p.model is not None and p.model != cfg.name:
                raise BadRequest(f"no model {p.model!r}: this server serves {cfg.name!r}", "model", status=404)
            task, commit, seed = build_task(pipe, p)
        except Exception as exc:  # noqa: BLE001
            return error_response(exc, request)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def notify(what, payload):  # called from the scheduler thread
            loop.call_soon_threadsafe(events.put_nowait, (what, payload))  # (RuntimeError once the loop closed)

        job = Job(task, notify, watch=p.stream, frames=p.include_denoising, commit=commit,
                  deadline=time.monotonic() + cfg.timeout, id=request.state.rid)
        try:
            scheduler.submit(job)
        except Exception as exc:  # noqa: BLE001
            return error_response(exc, request)
        meta = {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": cfg.name, "seed": seed}
        if p.stream:
            return StreamingResponse(stream(job, events, p, meta, task), media_type="text/event-stream",
                                     headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        while True:  # wait, dropping the job if the client goes away
            try:
                what, payload = await asyncio.wait_for(events.get(), 0.25)
            except asyncio.TimeoutError:
                if not scheduler.alive or time.monotonic() > job.deadline + 5:  # never wait on a dead thread
                    scheduler.cancel(job)
                    return answer(503, "the server could not finish the request (its scheduler stopped)")
                if await request.is_disconnected():
                    scheduler.cancel(job)
                    log.info("%s client went away: its rows leave the batch", request.state.rid)
                    return answer(499, "client closed the request")
                continue
            if what == "step":
                continue
            if what == "error":
                return error_response(payload, request)
            result, usage = payload
            return JSONResponse(respond(kind, p, result, usage, task, meta, run))

    for path in ENDPOINTS:
        app.add_api_route(path, endpoint, methods=["POST"])
    app.add_middleware(Gate)
    if cfg.cors:  # outermost: the gate's own refusals (401, 413, 503) carry the CORS headers too
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors), allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["x-request-id"])

    def error_response(exc: BaseException, request) -> JSONResponse:
        status = status_of(exc)
        if status == 500:
            log.error("%s internal error\n%s", request.state.rid,
                      "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            return answer(500, internal_error(exc, request.state.rid))
        headers = {"retry-after": "1"} if status == 429 else None
        return answer(status, first_line(exc), getattr(exc, "param", None), headers)

    async def stream(job: Job, events: asyncio.Queue, p: Parsed, meta: dict, task):
        sent = [""] * p.n
        chat = p.endpoint == "chat"
        obj = {"chat": "chat.completion.chunk", "infill": "infill.chunk", "edit": "edit.chunk"}.get(p.endpoint,
                                                                                                  "text_completion")

        def chunk(choices, **extra) -> str:
            return "data: " + json.dumps({**meta, "object": obj, "choices": choices, **extra}) + "\n\n"

        def piece(b: int, text: str | None, reason: str | None = None) -> dict:
            if chat:
                delta = {} if text is None else {"content": text}
                return {"index": b, "delta": delta, "finish_reason": reason, "logprobs": None}
            return {"index": b, "text": text or "", "finish_reason": reason, "logprobs": None}

        done = False
        try:
            if chat:
                yield chunk([{"index": b, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                              "logprobs": None} for b in range(p.n)])
            backlog: list = []  # an event taken while gathering steps
            while True:
                try:
                    what, payload = backlog.pop() if backlog else await asyncio.wait_for(events.get(), PING_SECONDS)
                except asyncio.TimeoutError:
                    if scheduler.alive and time.monotonic() <= job.deadline + 5:
                        yield ": ping\n\n"  # an SSE comment: keeps proxies from cutting a quiet stream
                        continue
                    scheduler.cancel(job)
                    what, payload = "error", Cancelled("the server could not finish the request (its scheduler stopped)")
                if what == "step":
                    steps = [payload]  # the steps already waiting: every frame is sent, the text once
                    while not events.empty():
                        waiting = events.get_nowait()
                        if waiting[0] != "step":
                            backlog.append(waiting)
                            break
                        steps.append(waiting[1])
                    out = []
                    for report in steps:
                        if p.include_denoising and report.frame is not None:
                            data = {**meta, "object": obj, "choices": [], "diffusion_frame": report.frame,
                                    "diffusion_texts": report.texts}
                            out.append("event: diffusion_frame\ndata: " + json.dumps(data) + "\n\n")
                    if out:
                        yield "".join(out)
                    grown = []
                    for b, text in enumerate(steps[-1].committed[: p.n]):
                        if len(text) > len(sent[b]) and text.startswith(sent[b]):
                            grown.append(piece(b, text[len(sent[b]) :]))
                            sent[b] = text
                    if grown:
                        yield chunk(grown)
                elif what == "error":
                    done = True
                    status = status_of(payload)
                    message = first_line(payload) if status != 500 else f"internal error: {first_line(payload, default='')}"
                    yield "data: " + json.dumps(error_body(message, status)) + "\n\n"
                    yield "data: [DONE]\n\n"
                    return
                else:
                    done = True
                    result, usage = payload
                    body = respond(p.endpoint, p, result, usage, task, meta, run)
                    last = []
                    for b, choice in enumerate(body["choices"]):
                        final = choice["message"]["content"] if chat else choice["text"]
                        if not final.startswith(sent[b]):  # never expected: the committed text is final
                            log.warning("%s row %d: committed text is not a prefix of the final text", job.id, b)
                        rest = final[len(sent[b]) :] if final.startswith(sent[b]) else ""
                        if rest or "fills" in choice:
                            last.append({**piece(b, rest), **({"fills": choice["fills"]} if "fills" in choice else {})})
                    if last:
                        yield chunk(last)
                    yield chunk([piece(b, None, c["finish_reason"]) for b, c in enumerate(body["choices"])])
                    if p.include_usage:
                        yield chunk([], usage=body["usage"])
                    yield "data: [DONE]\n\n"
                    return
        finally:
            if not done:
                scheduler.cancel(job)
                log.info("%s stream closed early: its rows leave the batch", job.id)

    return app


def _created(run) -> float:
    try:
        return (run.run_dir / "config.json").stat().st_mtime
    except OSError:
        return time.time()


def NOTHING_COMMITTED(ids: list[int]) -> str:
    """Fills (FIM, infill, edit) stream their frames and then the whole answer in one piece: the
    text around the holes is not a prefix that grows."""
    return ""


def build_task(pipe, p: Parsed):
    """The task a request asks for, how its committed ids become text, and the seed it uses."""
    from ..control.continuation import prompt_task
    from ..control.dialogue import chat_task
    from ..control.dialogue import reply as chat_reply
    from ..control.editing import edit_task
    from ..control.filling import infill_task
    from ..control.templates import Hole, Template

    run, tok = pipe.run, pipe.tokenizer
    s = dict(p.settings)
    seed = s.pop("seed")
    seed = secrets.randbits(62) if seed is None else seed
    label, guidance = s.pop("label"), s.pop("guidance")
    fills = p.endpoint in ("infill", "fim") or p.suffix is not None
    steps, sampler, options = pipe.settings(s.pop("steps"), s.pop("sampler"), s,
                                             pipe.infill_defaults if fills else None)
    common = {"steps": steps, "sampler": sampler, "seed": seed, "num": p.n, **options}
    def text_of(ids: list[int]) -> str:
        if tok.eot_id in ids:
            ids = ids[: ids.index(tok.eot_id)]
        return tok.decode(ids).rstrip("\ufffd")

    if p.endpoint == "chat":
        if not run.cfg.data.sft:
            raise BadRequest(f"{pipe.run.run_dir.name} is not instruction-tuned (train --sft): it has never seen the "
                             f"chat template; use /v1/completions", "model")
        if label is not None:
            raise BadRequest("label does not apply to chat", "label")
        turns = [m for _, m in p.messages]
        history = list(zip(turns[0:-1:2], turns[1:-1:2]))
        task = chat_task(run, turns[-1], history, length=p.length, guidance=guidance, **common)
        return task, lambda ids: chat_reply(tok, ids).rstrip("\ufffd"), seed
    cond = {"label": label, "guidance": guidance}
    if p.endpoint in ("completions", "fim") and p.suffix is not None:
        n = p.length or 16
        parts = [x for x in (p.prompt, Hole(n, n), p.suffix) if x != ""]
        return infill_task(run, Template(parts), **cond, **common), NOTHING_COMMITTED, seed
    if p.endpoint == "completions":
        return prompt_task(run, p.prompt, length=p.length, stop_at_eot=True, **cond, **common), text_of, seed
    if p.endpoint == "infill":
        return infill_task(run, p.template, candidates=p.candidates, **cond, **common), NOTHING_COMMITTED, seed
    start, end = p.span if p.span is not None else (None, None)
    return edit_task(run, p.text, start, end, strength=p.strength, **cond, **common), NOTHING_COMMITTED, seed


def respond(kind: str, p: Parsed, result, usage, task, meta: dict, run) -> dict:
    """The OpenAI-shaped body of a finished request."""
    tok = run.tokenizer
    gen = result.generation
    plan = task.plans[-1]
    P = plan.canvas.prompt_length
    fixed = int(plan.canvas.fixed[0].sum())
    choices, completion = [], 0
    for b in range(len(result.texts)):
        new = gen.tokens[b, P:].tolist()
        stopped = tok.eot_id in new
        reason = "stop" if stopped else "length"
        if kind == "chat":
            choices.append({"index": b, "message": {"role": "assistant", "content": result.texts[b]},
                            "finish_reason": reason, "logprobs": None})
        elif kind in ("completions", "fim"):
            text = "".join(result.fills[b])  # the continuation (or the middle, with a suffix)
            choices.append({"index": b, "text": text, "finish_reason": reason if p.suffix is None else "length",
                            "logprobs": None})
        else:
            choices.append({"index": b, "text": result.texts[b], "fills": result.fills[b], "finish_reason": "length"})
        if kind in ("chat", "completions") and p.suffix is None:  # a continuation: up to its end-of-text
            completion += new.index(tok.eot_id) if stopped else len(new)
        elif "candidates" in result.extra:  # variable holes: the sizes of the candidate kept for this sample
            tried = result.extra["candidates"]
            completion += sum(min(tried, key=lambda c: c["bits"][b])["sizes"])
        else:  # the free positions filled
            completion += int((~gen.fixed[b]).sum()) if gen.fixed is not None else len(new)
    nfe = usage.nfe
    body = {**meta, "object": {"chat": "chat.completion", "completions": "text_completion", "fim": "text_completion",
                               "infill": "infill", "edit": "edit"}[kind],
            "choices": choices,
            "usage": {"prompt_tokens": fixed, "completion_tokens": completion, "total_tokens": fixed + completion,
                      "denoising_steps": usage.steps, "nfe": nfe,
                      "tokens_per_forward": round(completion / max(nfe, 1), 4),
                      "time_to_first_commit_s": None if usage.time_to_first_commit_s is None
                      else round(usage.time_to_first_commit_s, 4),
                      "seconds": round(usage.seconds, 4), "queued_seconds": round(usage.queued_seconds, 4)},
            "sampler": result.sampler}
    if result.extra:
        body["extra"] = result.extra
    return body


def prometheus(cfg: Settings, scheduler: Scheduler) -> str:
    """/metrics in the Prometheus text format."""
    lines = ["# HELP textdiffusion_requests_total Requests answered, by endpoint and HTTP status.",
             "# TYPE textdiffusion_requests_total counter"]
    for (path, status), n in sorted(cfg.counts.items()):
        lines.append(f'textdiffusion_requests_total{{endpoint="{path}",status="{status}"}} {n}')
    st = scheduler.stats
    for name, kind, doc, value in (
            ("queue_depth", "gauge", "Requests waiting to join the batch.", scheduler.queue_depth),
            ("running_requests", "gauge", "Requests whose rows are in the batch.", scheduler.running),
            ("batch_rows", "gauge", "Rows in flight (one network call per step steps them all).", scheduler.rows_in_flight),
            ("last_step_rows", "gauge", "Rows in the last network call.", st["batch_rows"]),
            ("steps_total", "counter", "Batched denoising steps (network calls).", st["steps"]),
            ("rows_stepped_total", "counter", "Row-steps taken (rows per call, summed).", st["rows_stepped"]),
            ("tokens_total", "counter", "Tokens generated by finished requests.", st["tokens"]),
            ("tokens_per_second", "gauge", "Tokens of requests finished in the last 10 s, per second.",
             round(scheduler.tokens_per_second(), 3)),
            ("finished_total", "counter", "Requests answered with a result.", st["finished"]),
            ("failed_total", "counter", "Requests that ended in an error.", st["failed"]),
            ("cancelled_total", "counter", "Requests dropped (client went away, timeout).", st["cancelled"])):
        lines += [f"# HELP textdiffusion_{name} {doc}", f"# TYPE textdiffusion_{name} {kind}", f"textdiffusion_{name} {value}"]
    return "\n".join(lines) + "\n"
