"""textdiffusion serve: an OpenAI-compatible HTTP server with step-level batching."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from ..errors import UsageError
from .common import (
    NON_NEGATIVE,
    POSITIVE,
    add_checkpoint_arg,
    checkpoint_folder,
    load,
    positive_seconds,
)

NAME = "serve"
PARSER = dict(help="serve a model over an OpenAI-compatible HTTP API (needs the serve extra)",
              description="Serve a shipped model or a run directory over HTTP: /v1/models, /v1/completions, "
                          "/v1/chat/completions (instruction-tuned runs), /v1/fim/completions, /v1/infill, /v1/edit, "
                          "and a demo page at /. Concurrent requests are batched step by step: one network call "
                          "per denoising step for all of them. Listens on 127.0.0.1 unless --host says otherwise. "
                          "Needs: pip install 'textdiffusion[serve]'.",
              epilog="example:\n  textdiffusion serve english --port 8000\n  curl localhost:8000/v1/completions -H "
                     "'Content-Type: application/json' -d '{\"prompt\": \"ROMEO:\", \"max_tokens\": 32, \"steps\": 16}'\n"
                     "  textdiffusion serve runs/english-ar --draft runs/english-block --draft-len 8   # speculative",
              formatter_class=argparse.RawDescriptionHelpFormatter)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, metavar="NAME|DIR",
                   help="a shipped model name (english, code) or a run directory (default: the English model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=NON_NEGATIVE, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require Authorization: Bearer KEY on /v1/* (default: $TEXTDIFFUSION_API_KEY, else none)")
    p.add_argument("--max-batch", type=POSITIVE, default=32, help="rows in one network call (default 32)")
    p.add_argument("--max-queue", type=POSITIVE, default=64,
                   help="requests that may wait for room in the batch; more are answered 429 (default 64)")
    p.add_argument("--max-steps", type=POSITIVE, default=1024, help="most denoising steps a request may ask (default 1024)")
    p.add_argument("--max-body-bytes", type=POSITIVE, default=1 << 20, help="largest request body (default 1 MiB)")
    p.add_argument("--timeout", type=positive_seconds, default=300.0, metavar="S",
                   help="seconds a request may take, waiting included, before it is answered 408 (default 300)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from ORIGIN to call the API (repeatable; default: none)")
    p.add_argument("--no-batching", action="store_true", help="run one request at a time (to compare)")
    p.add_argument("--name", default=None, help="the model id clients pass (default: the model's name)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--threads", type=NON_NEGATIVE, default=0, help="CPU threads for torch (default 0 = auto)")
    p.add_argument("--draft", default=None, metavar="RUN",
                   help="an AR model only: speculative decoding by default, RUN (a masked or block diffusion model "
                        "with the same tokenizer) drafting and the AR model verifying; the texts are the AR model's "
                        "own (requests may still name sampler ar)")
    p.add_argument("--draft-len", type=POSITIVE, default=8, metavar="K", help="tokens drafted per round (default 8)")
    p.add_argument("--draft-steps", type=POSITIVE, default=1, metavar="N",
                   help="drafter calls per round, left to right (default 1)")
    p.add_argument("--draft-confidence", type=float, default=0.0, metavar="P",
                   help="end a round's draft where the drafter's top probability is below P (default 0: off)")
    add_checkpoint_arg(p)


def main(args) -> int:
    args.model = checkpoint_folder(args.model, args.checkpoint)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UsageError(f"the server needs {exc.name}: pip install 'textdiffusion[serve]'") from None
    from ..pipeline import Pipeline
    from ..runs import resolve
    from ..sampling.cards import card
    from ..serve.app import Settings, create_app

    folder = resolve(args.model)
    _check_port(args.host, args.port)  # before the model loads: a port in use is one line, at once
    run = load(args.model, args.device, args.threads)
    pipe = Pipeline(run, card(folder))
    if args.draft is not None:
        pipe.draft_with(load(args.draft, args.device, args.threads), args.draft_len, args.draft_steps,
                        args.draft_confidence)
    name = args.name or (args.model if args.model and "/" not in args.model and not os.path.isdir(args.model)
                         else folder.name) or "english"
    settings = Settings(name=name, scheduler_thread=False, api_key=args.api_key or os.environ.get("TEXTDIFFUSION_API_KEY") or None,
                        max_batch=args.max_batch, max_queue=args.max_queue, max_steps=args.max_steps,
                        max_body=args.max_body_bytes, timeout=args.timeout, cors=tuple(args.cors_origin),
                        batching=not args.no_batching)
    if args.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        print(f"textdiffusion: note: listening on {args.host} without --api-key: anyone who can reach it may use it",
              file=sys.stderr)
    app = create_app(pipe, settings)
    stopped_by = serve(app, args.host, args.port, args.log_level, settings.timeout)
    if stopped_by is not None:
        print(f"textdiffusion: stopped by {stopped_by} after the requests in flight finished", file=sys.stderr)
    return 0


def serve(app, host: str, port: int, log_level: str, drain_seconds: float) -> str | None:
    """HTTP (uvicorn) in a thread, the scheduler in this, the main, thread (torch runs faster
    there). A graceful drain: on SIGTERM or Ctrl-C new requests get 503 and the listening socket
    closes, the requests in flight finish (up to ``drain_seconds``), then it returns the signal's
    name; a second signal stops at once. (uvicorn's own re-raising of the signal is left out: a
    drained server exits 0.)"""
    import logging
    import signal
    import threading

    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    caught: list[str] = []

    class Server(uvicorn.Server):
        def install_signal_handlers(self):  # (older uvicorn) the main thread handles signals
            pass

        @contextlib.contextmanager
        def capture_signals(self):  # (newer uvicorn) the same
            yield

        def _log_started_message(self, listeners):
            super()._log_started_message(listeners)
            for sock in listeners:
                h, p = sock.getsockname()[:2]
                print(f"textdiffusion: serving {app.state.settings.name} on http://{h}:{p}", file=sys.stderr, flush=True)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=drain_seconds,
                            access_log=False, lifespan="on")
    server = Server(config)

    def on_signal(sig, frame):
        app.state.draining = True
        if caught:  # a second signal: stop now
            server.force_exit = True
        caught.append(signal.Signals(sig).name)
        server.should_exit = True

    before = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    http = threading.Thread(target=server.run, name="textdiffusion-http", daemon=True)
    try:
        app.state.scheduler.bind_here()
        http.start()
        app.state.scheduler.drive(until=lambda: not http.is_alive())
        http.join(drain_seconds + 10)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    if not server.started and not caught:  # uvicorn logged why and ended its thread (it exits 1 alone)
        raise UsageError(f"the server could not start listening on {host}:{port} (the log line above says why): "
                         f"choose another --host/--port")
    return caught[0] if caught else None


def _check_port(host: str, port: int) -> None:
    """A one-line error when ``host``:``port`` cannot be listened on (in use, or not this machine's
    address), before the model's requests could be accepted: uvicorn only logs it, and the
    command exited 0."""
    import errno
    import socket

    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host!r} is not an address of this machine ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(f"port {port} on {host} is already in use: stop what listens there, or choose "
                                 f"another --port") from None
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise UsageError(f"no permission to listen on port {port}: ports below 1024 need root; choose "
                                 f"another --port") from None
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}): choose another --host/--port") from None
