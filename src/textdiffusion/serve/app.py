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
and ``diffusion_texts`` the canvas with masks shown (streaming.py). Errors are OpenAI-shaped JSON
(``{"error": {"message", "type", "param", "code"}}``) with a 4xx status for bad input (errors.py).

``create_app`` only assembles the pieces, each importable alone: the gate (gate.py: request ids,
the API key, draining, body limits), the GET routes (routes.py), the POST handler (handler.py)
and the scheduler; the routes find them on ``app.state`` (``pipe``, ``settings``, ``scheduler``,
``draining``).
"""

from __future__ import annotations

from dataclasses import dataclass


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


def create_app(pipe, settings: Settings | None = None):
    """The FastAPI app serving ``pipe`` (a ``Pipeline``) with ``settings``."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from starlette.exceptions import HTTPException

    from .errors import answer
    from .gate import Gate
    from .handler import endpoint
    from .requests import ENDPOINTS
    from .routes import GET
    from .scheduler import Scheduler

    cfg = settings or Settings()
    scheduler = Scheduler(pipe.run, max_batch=cfg.max_batch, max_queue=cfg.max_queue, batching=cfg.batching)

    @asynccontextmanager
    async def lifespan(app):
        if cfg.scheduler_thread:
            scheduler.start()
        app.state.draining = False
        yield
        scheduler.stop()

    app = FastAPI(title="textdiffusion", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pipe, app.state.settings, app.state.scheduler, app.state.draining = pipe, cfg, scheduler, False

    async def http_error(request, exc):
        return answer(exc.status_code, str(exc.detail))

    app.add_exception_handler(HTTPException, http_error)
    for path, route in GET:
        app.add_api_route(path, route, methods=["GET"])
    for path in ENDPOINTS:
        app.add_api_route(path, endpoint, methods=["POST"])
    app.add_middleware(Gate, state=app.state)
    if cfg.cors:  # outermost: the gate's own refusals (401, 413, 503) carry the CORS headers too
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors), allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["x-request-id"])
    return app
