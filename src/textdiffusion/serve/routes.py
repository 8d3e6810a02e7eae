"""The GET endpoints: the model card, liveness, readiness (503 while draining or when the
scheduler is down), Prometheus metrics and the demo page. Each reads the server's pieces from
``request.app.state`` (app.py)."""

from __future__ import annotations

import time

from starlette.requests import Request

from .errors import answer
from .metrics import prometheus


def model_card(state) -> dict:
    run, cfg = state.pipe.run, state.settings
    drafter = getattr(state.pipe, "drafter", None)
    return {"id": cfg.name, "object": "model", "created": int(_created(run)), "owned_by": "textdiffusion",
            "process": run.process.name, "context": run.cfg.model.context,
            "chat": bool(run.cfg.data.sft), "labels": list(run.labels or []),
            "draft": None if drafter is None else str(drafter.run_dir)}


def _created(run) -> float:
    try:
        return (run.run_dir / "config.json").stat().st_mtime
    except OSError:
        return time.time()


async def models(request: Request):
    return {"object": "list", "data": [model_card(request.app.state)]}


async def one_model(request: Request, name: str):
    cfg = request.app.state.settings
    if name != cfg.name:
        return answer(404, f"no model {name!r}: this server serves {cfg.name!r}", "model")
    return model_card(request.app.state)


async def health():
    return {"status": "ok"}


async def ready(request: Request):
    state = request.app.state
    if not state.scheduler.alive:
        return answer(503, "the scheduler is not running: the server cannot generate (see its log)")
    if state.draining:
        return answer(503, "draining: the server is finishing its requests before it stops")
    return {"status": "ready", "queue": state.scheduler.queue_depth, "running": state.scheduler.running}


async def metrics(request: Request):
    from starlette.responses import PlainTextResponse

    return PlainTextResponse(prometheus(request.app.state.scheduler), media_type="text/plain; version=0.0.4")


async def demo(request: Request):
    from starlette.responses import HTMLResponse

    from .demo import page

    state = request.app.state
    return HTMLResponse(page(state.settings.name, state.pipe.run))


GET = [("/v1/models", models), ("/v1/models/{name}", one_model), ("/health", health), ("/ready", ready),
       ("/metrics", metrics), ("/", demo)]
