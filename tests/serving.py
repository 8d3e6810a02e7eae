"""The server as the tests run it: uvicorn serving a pipeline on 127.0.0.1 (a free port) in a
thread, the official openai client pointed at it, and a reader of its /metrics."""

import contextlib
import threading
import time

import httpx
import openai
import uvicorn

from textdiffusion.serve.app import Settings, create_app

KEY = "test-key"


class Served(str):
    """The base URL, with the app behind it (``.app``)."""

    def __new__(cls, url: str, app):
        self = super().__new__(cls, url)
        self.app = app
        return self


@contextlib.contextmanager
def serving(pipe, **settings):
    """uvicorn serving ``pipe`` on 127.0.0.1 (a free port) in a thread; yields the base URL (a
    ``Served``: ``.app`` is the FastAPI app)."""
    app = create_app(pipe, Settings(name="tiny", **settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Served(f"http://127.0.0.1:{port}", app)
    finally:
        server.should_exit = True
        thread.join(20)
        assert not thread.is_alive(), "the server did not stop"


def client(url: str, key: str | None = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key or "none", max_retries=0, timeout=60)


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10, headers={"Authorization": f"Bearer {KEY}"}).text
    for line in text.splitlines():
        if line.startswith(f"textdiffusion_{name} "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name} in\n{text}")


