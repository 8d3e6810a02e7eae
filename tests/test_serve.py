"""The OpenAI-compatible server, with real clients on loopback: the official ``openai`` client and
httpx against uvicorn serving a tiny model this file trains (in a thread; the SIGTERM test starts
``textdiffusion serve`` as a process). Every wait is bounded."""

import contextlib
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time

import httpx
import jsonschema
import numpy as np
import openai
import pytest
from markov import ALPHABET, tokenizer
from serving import KEY, client, metric, serving

from textdiffusion import Pipeline
from textdiffusion.config import Config, ModelConfig, ProcessConfig, TrainConfig
from textdiffusion.control import chat
from textdiffusion.data import chat_prompt, sft_rows
from textdiffusion.data.rows import Pair
from textdiffusion.sampling.trace import SCHEMA
from textdiffusion.tokenizers import CharTokenizer
from textdiffusion.training.trainer import train

CONTEXT = 24
FRAME_SCHEMA = SCHEMA["properties"]["frames"]["items"]


def _config(**train_args) -> Config:
    return Config(model=ModelConfig(n_layer=2, n_head=4, d_model=64, context=CONTEXT), process=ProcessConfig(name="masked"),
                  train=TrainConfig(batch_size=64, lr=3e-3, min_lr=3e-4, warmup_steps=20, **train_args))


@pytest.fixture(scope="module")
def cycle_pipe(cycle_dir):
    return Pipeline.from_pretrained(cycle_dir)


@pytest.fixture(scope="module")
def sft_pipe(tmp_path_factory):
    """A briefly instruction-tuned run (its answers need not be right: the server must give what
    ``control.chat`` gives)."""
    tok = CharTokenizer(sorted(set("abcdef" + chat_prompt(""))))
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdef") for _ in range(4)) for _ in range(2000)]
    pairs = [Pair(str(i), w, w[::-1]) for i, w in enumerate(words)]
    cfg = _config(max_steps=40, eval_every=40, ckpt_every=40, log_every=40)
    cfg.model.context = 32
    cfg.data.sft = True
    out = tmp_path_factory.mktemp("serve-sft")
    train(cfg, out, {"train": sft_rows(pairs[:1900], tok, 32), "val": sft_rows(pairs[1900:], tok, 32)}, tok,
          progress=False)
    return Pipeline.from_pretrained(out)


@contextlib.contextmanager
def paced(url, frames: list):
    """The server's scheduler takes its next step only once the stream has delivered the last
    step's frame to ``frames`` (bounded: 60 s a step): each step's committed text then arrives on
    its own. Unpaced, a busy machine lets the scheduler run ahead, and the stream sends the text of
    all the reports waiting for it once (by design), so how many pieces arrive would depend on
    the machine's speed."""
    batch = url.app.state.scheduler.batch
    step_all, taken = batch.step_all, [0]

    def step():
        deadline = time.monotonic() + 60
        while len(frames) < taken[0] and time.monotonic() < deadline:
            time.sleep(0.002)
        step_all()
        taken[0] += 1

    batch.step_all = step
    try:
        yield
    finally:
        batch.step_all = step_all


def test_the_openai_client_gets_completions_streams_and_fim(cycle_pipe):
    """models, completions, streaming (committed text grows monotonically and ends as the text
    returned without streaming), denoising frames (valid trace-v1 frames whose masks only
    shrink), usage, FIM through ``suffix``. The known answers: greedy decoding continues the
    cycle, and the hole of "ab???fgh" is "cde". Catches a server that echoes the prompt, streams
    the whole canvas (masks included) instead of the committed prefix, or drops the suffix."""
    with serving(cycle_pipe, api_key=KEY) as url:
        c = client(url)
        assert [m.id for m in c.models.list().data] == ["tiny"]
        settings = {"steps": 12, "sampler": "confidence", "seed": 0}
        out = c.completions.create(model="tiny", prompt="abc", max_tokens=12, temperature=0, extra_body=settings)
        assert out.choices[0].text == "defghabcdefg" and out.choices[0].finish_reason == "length"
        usage = out.usage.model_dump()
        assert usage["completion_tokens"] == 12 and usage["prompt_tokens"] == 3
        assert usage["denoising_steps"] == 12 and usage["nfe"] == 12 and usage["tokens_per_forward"] == 1.0
        assert 0 < usage["time_to_first_commit_s"] <= usage["seconds"] + usage["queued_seconds"] + 0.05

        shown, frames, usage = [], [], None
        with paced(url, frames):  # each step's text on its own (a busy machine would merge some)
            stream = c.completions.create(model="tiny", prompt="abc", max_tokens=12, temperature=0, stream=True,
                                          stream_options={"include_usage": True, "include_denoising": True},
                                          extra_body=settings)
            for chunk in stream:
                extra = chunk.model_extra or {}
                if "diffusion_frame" in extra:
                    frames.append(extra["diffusion_frame"])
                    assert len(extra["diffusion_texts"]) == 1
                for choice in chunk.choices:
                    if choice.text:
                        shown.append((shown[-1] if shown else "") + choice.text)
                usage = chunk.usage or usage
        assert shown[-1] == out.choices[0].text
        assert len(shown) >= 4  # the text arrived in pieces, each a prefix of the final text
        assert all(shown[-1].startswith(s) for s in shown)
        assert len(frames) == 12 and usage.nfe == 12
        for f in frames:
            jsonschema.validate(f, FRAME_SCHEMA)
        masked = [len(f["rows"][0]["masked"]) for f in frames]
        assert masked == sorted(masked, reverse=True) and masked[0] == 11 and masked[-1] == 0
        assert [f["step"] for f in frames] == list(range(12))

        # in a random order the committed prefix waits for its leftmost mask (planted: committing
        # every decided token, masks skipped, streams text that is not a prefix of the answer)
        random_order = {**settings, "sampler": "random", "steps": 6}
        final = c.completions.create(model="tiny", prompt="abc", max_tokens=12, temperature=0,
                                     extra_body=random_order).choices[0].text
        shown, frames = [], []
        with paced(url, frames):
            for chunk in c.completions.create(model="tiny", prompt="abc", max_tokens=12, temperature=0, stream=True,
                                              stream_options={"include_denoising": True}, extra_body=random_order):
                frames += [chunk.model_extra["diffusion_frame"]] if "diffusion_frame" in (chunk.model_extra or {}) else []
                shown += [(shown[-1] if shown else "") + ch.text for ch in chunk.choices if ch.text]
        assert shown[-1] == final and all(final.startswith(s) for s in shown) and len(shown) >= 2 and len(frames) == 6

        fim = c.completions.create(model="tiny", prompt="ab", suffix="fgh", max_tokens=3, temperature=0,
                                 extra_body={"steps": 3})
        assert fim.choices[0].text == "cde"
        raw = httpx.post(f"{url}/v1/fim/completions", json={"prompt": "ab", "suffix": "fgh", "max_tokens": 3, "temperature": 0},
                         headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
        assert raw["choices"][0]["text"] == "cde"


def test_infill_edit_and_chat_over_http(cycle_pipe, sft_pipe):
    """/v1/infill and /v1/edit over plain HTTP give what the Python API gives; chat on a run that
    was not instruction-tuned is a 400 saying why; chat on an SFT run gives what ``control.chat``
    gives for the same seed, streamed or not."""
    with serving(cycle_pipe) as url:
        filled = httpx.post(f"{url}/v1/infill", json={"template": "ab[MASK:3]fgh", "steps": 3, "temperature": 0}, timeout=30).json()
        assert filled["choices"][0]["text"] == "abcdefgh" and filled["choices"][0]["fills"] == ["cde"]
        body = {"text": "abcdefgh", "span": [2, 5], "strength": 1.0, "steps": 3, "seed": 4}
        edited = httpx.post(f"{url}/v1/edit", json=body, timeout=30).json()
        assert edited["choices"][0]["text"] == cycle_pipe.edit("abcdefgh", (2, 5), strength=1.0, steps=3, seed=4).text
        with pytest.raises(openai.BadRequestError, match="not instruction-tuned"):
            client(url).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "abc"}])
    with serving(sft_pipe) as url:
        c = client(url)
        messages = [{"role": "user", "content": "abcd"}, {"role": "assistant", "content": "dcba"},
                    {"role": "user", "content": "fede"}]
        expected = chat(sft_pipe.run, "fede", [("abcd", "dcba")], steps=8, seed=3, sampler="confidence",
                        temperature=0.0).texts[0]
        settings = {"steps": 8, "seed": 3, "sampler": "confidence"}
        got = c.chat.completions.create(model="tiny", messages=messages, temperature=0, extra_body=settings)
        assert got.choices[0].message.content == expected and got.choices[0].message.role == "assistant"
        pieces = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model="tiny", messages=messages, temperature=0, stream=True, extra_body=settings) if ch.choices]
        assert "".join(pieces) == expected


@pytest.mark.parametrize("body, status, needle", [
    ({"prompt": "abc", "bogus": 1}, 400, "unknown field 'bogus'"),
    ({"prompt": "abc", "logit_bias": {"1": 5}}, 400, "logit_bias is an OpenAI option"),
    ({"prompt": "abc", "steps": 0}, 400, "steps must be a whole number >= 1"),
    ({"prompt": "abc", "max_tokens": 40}, 400, "max_tokens must be a whole number >= 1 and <= 24"),
    ({"prompt": "abcdefghabcdefghabcd", "max_tokens": 10}, 400, "exceeds the model context"),
    ({"template": "ab[MASK:x]"}, 400, "malformed hole"),
    ({"template": "ab[MASK:3]", "prompt": "a"}, 400, "unknown field 'prompt'"),
    ({"prompt": "abc", "sampler": "ddpm"}, 400, "the ddpm sampler needs a gaussian model"),
    ({"prompt": "abc", "sampler": "nope"}, 400, "unknown sampler 'nope'"),
    ({"prompt": "abc", "temperature": -1}, 400, "temperature must be >= 0"),
    ({"prompt": "abc", "block_length": 4}, 400, "takes no block_length"),
    ({"prompt": "abc", "model": "gpt-4"}, 404, "no model 'gpt-4'"),
    ({"prompt": "abc", "n": 99}, 400, "n must be a whole number >= 1 and <= 16"),
    ({"prompt": "abc", "guidance": 2.0}, 400, "guidance needs a condition"),
    ({"prompt": "abX"}, 400, "cannot"),  # a character the tokenizer never saw
    ({"prompt": 5}, 400, "prompt must be a string"),
    ({"prompt": "abc", "stream_options": {"include_usage": True}}, 400, "stream_options needs stream: true"),
    ([1, 2], 400, "must be a JSON object"),
])
def test_bad_requests_get_a_4xx_naming_the_problem(cycle_pipe, body, status, needle):
    """Each bad request is a 4xx JSON error whose message names the problem, never a 500. (One
    server for the module would be faster; a fresh one per case keeps them independent and costs
    ~0.1 s each.)"""
    with serving(cycle_pipe, api_key=KEY) as url:
        path = "/v1/infill" if isinstance(body, dict) and "template" in body else "/v1/completions"
        r = httpx.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert needle in error["message"], error


def test_other_bad_requests_and_neutral_openai_defaults(cycle_pipe):
    """Wrong or missing API key (401), a huge body (413, declared or streamed without a length),
    a body that is not JSON, a template with broken holes, an edit span outside the text; and the
    OpenAI fields a client sends at their neutral values (presence_penalty 0, stop null) pass."""
    with serving(cycle_pipe, api_key=KEY, max_body=2000) as url:
        auth = {"Authorization": f"Bearer {KEY}"}
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            r = httpx.post(f"{url}/v1/completions", json={"prompt": "abc"}, headers=headers, timeout=30)
            assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
        with pytest.raises(openai.AuthenticationError):
            client(url, key="wrong").models.list()
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "a" * 5000}, headers=auth, timeout=30)
        assert r.status_code == 413 and "limit" in r.json()["error"]["message"]

        def chunks():
            yield b'{"prompt": "'
            for _ in range(10):
                yield b"a" * 500
            yield b'"}'

        r = httpx.post(f"{url}/v1/completions", content=chunks(), headers=auth, timeout=30)
        assert r.status_code == 413
        r = httpx.post(f"{url}/v1/completions", content=b"{not json", headers=auth, timeout=30)
        assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/v1/infill", json={"template": "ab[MASK:3-1]"}, headers=auth, timeout=30)
        assert r.status_code == 400 and "bad hole" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/v1/edit", json={"text": "abc", "span": [2, 9]}, headers=auth, timeout=30)
        assert r.status_code == 400 and "span" in r.json()["error"]["message"]
        r = httpx.post(f"{url}/v1/completions", headers=auth, timeout=30,
                       json={"prompt": "abc", "max_tokens": 4, "presence_penalty": 0, "stop": None, "steps": 4})
        assert r.status_code == 200, r.text
        assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok"}
        assert httpx.get(f"{url}/nowhere", timeout=10).status_code == 404
        assert metric(url, "failed_total") == 0  # every refusal happened before the scheduler
        r = httpx.post(f"{url}/v1/completions", content=b"[" * 100_000, headers=auth, timeout=30)
        assert r.status_code == 413  # (over max_body here; under it, below)
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 401  # the key guards /metrics too
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "abc"}, timeout=30,
                       headers={**auth, "x-request-id": "bad id\twith tabs" * 10})
        assert len(r.headers["x-request-id"]) == 16  # an unusable client id is replaced
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "abc", "max_tokens": 2, "steps": 2}, timeout=30,
                          headers={**auth, "x-request-id": "abc-123"}).headers["x-request-id"] == "abc-123"
    with serving(cycle_pipe) as url:
        r = httpx.post(f"{url}/v1/completions", content=b"[" * 200_000, timeout=30)
        assert r.status_code == 400 and "nests too deeply" in r.json()["error"]["message"]
        url.app.state.draining = True  # what SIGTERM sets: new work is refused, /ready says why
        r = httpx.post(f"{url}/v1/completions", json={"prompt": "abc"}, timeout=30)
        assert r.status_code == 503 and "shutting down" in r.json()["error"]["message"]
        assert httpx.get(f"{url}/ready", timeout=10).status_code == 503


def _request(i: int) -> dict:
    """The i-th of 16 greedy requests of different lengths, steps and samplers."""
    samplers = [("confidence", {}), ("margin", {}), ("semi-ar", {"block_length": 4}),
                ("threshold", {"block_length": 4, "kv_cache": "dual"}), ("ancestral", {}), ("entropy", {})]
    name, options = samplers[i % len(samplers)]
    prompt = "abcdefgh"[i % 8 :][: 1 + i % 4]
    return {"prompt": prompt, "max_tokens": 4 + i, "steps": 6 + (i * 5) % 14, "sampler": name, "temperature": 0,
            "seed": i, **options}


def all_at_once(url: str, bodies: list[dict]) -> list[str | None]:
    """Each body posted to /v1/completions from its own thread, all released together (bounded
    waits); the texts, in order."""
    texts: list[str | None] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def one(i):
        barrier.wait(30)
        texts[i] = httpx.post(f"{url}/v1/completions", json=bodies[i], timeout=60).json()["choices"][0]["text"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return texts


def test_a_request_gives_the_same_text_alone_and_among_fifteen_others(cycle_pipe):
    """Step-level batching changes nothing a request gets: at temperature 0 each of 16 requests
    of different lengths, steps and samplers is served alone and then all at once from 16
    threads, with identical texts; and the concurrent run took fewer network calls than the
    sixteen alone (they were batched). Catches rows that read each other's positions (planted: a
    padded batch called without its attention mask) and a scheduler that runs requests one by one
    (planted: admitting only into an empty batch)."""
    with serving(cycle_pipe) as url:
        alone = []
        for i in range(16):
            r = httpx.post(f"{url}/v1/completions", json=_request(i), timeout=60)
            assert r.status_code == 200, r.text
            alone.append(r.json()["choices"][0]["text"])
        calls_alone = metric(url, "steps_total")
        together = all_at_once(url, [_request(i) for i in range(16)])
        calls_together = metric(url, "steps_total") - calls_alone
    assert together == alone
    assert len(set(alone)) > 4  # the requests differ
    assert calls_together < 0.6 * calls_alone, (calls_together, calls_alone)


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """Briefly trained AR and Gaussian runs of the cycle (their texts need not be good: the server
    must give what they give alone)."""
    data = np.arange(20_000) % len(ALPHABET)
    out = {}
    for name in ("ar", "gaussian"):
        cfg = Config(model=ModelConfig(n_layer=1, n_head=2, d_model=32, context=CONTEXT), process=ProcessConfig(name=name),
                     train=TrainConfig(batch_size=32, max_steps=30, lr=3e-3, warmup_steps=5, eval_every=30,
                                       ckpt_every=30, log_every=30))
        out[name] = tmp_path_factory.mktemp(f"serve-{name}")
        train(cfg, out[name], {"train": data[:18_000], "val": data[18_000:]}, tokenizer(), progress=False)
    return out


@pytest.mark.parametrize("process, sampler", [("ar", "ar"), ("gaussian", "ddpm"), ("gaussian", "ddim")])
def test_the_ar_twin_and_the_gaussian_process_batch_too(small_runs, process, sampler):
    """The AR twin (one KV cache for the batch: rows joining left-padded, finished rows leaving)
    and the Gaussian samplers give each of 8 concurrent requests of different lengths what it gets
    alone, at temperature 0."""
    pipe = Pipeline.from_pretrained(small_runs[process])
    bodies = [{"prompt": "abcdefgh"[i % 8 :][: 1 + i % 3], "max_tokens": 3 + 2 * i, "steps": 4 + i, "sampler": sampler,
               "temperature": 0, "seed": i} for i in range(8)]
    with serving(pipe) as url:
        alone = [httpx.post(f"{url}/v1/completions", json=b, timeout=60).json()["choices"][0]["text"] for b in bodies]
        together = all_at_once(url, bodies)
        assert metric(url, "failed_total") == 0
    assert together == alone and len(set(alone)) > 2


def test_a_variable_hole_is_filled_as_the_python_api_fills_it(cycle_pipe):
    """/v1/infill with a [MASK:a-b] hole tries its candidate sizes as rows of one batch and keeps
    the likeliest, as ``Pipeline.infill`` does; usage counts the size kept."""
    template = "ab[MASK:2-5]gh"
    expected = cycle_pipe.infill(template, steps=4, seed=2, temperature=0.0, sampler="confidence")
    with serving(cycle_pipe) as url:
        body = httpx.post(f"{url}/v1/infill", json={"template": template, "steps": 4, "seed": 2, "temperature": 0,
                                                    "sampler": "confidence"}, timeout=60).json()
    assert body["choices"][0]["text"] == expected.text and body["choices"][0]["fills"] == expected.fills[0]
    assert body["usage"]["completion_tokens"] == len(expected.fills[0][0])  # one character per token here
    assert len(body["extra"]["candidates"]) == 4


def test_a_full_queue_is_429_and_a_client_that_leaves_frees_its_rows(cycle_pipe):
    """With one row per batch and one place in the queue, a third concurrent request is answered
    429 (the openai client raises RateLimitError); a streaming client that disconnects, and a
    client whose request times out on its side, have their rows dropped (the batch empties while
    their requests had thousands of steps left); a request past the server's --timeout is a 408."""
    slow = {"prompt": "abc", "max_tokens": 20, "steps": 50_000, "sampler": "ancestral", "cache": False}

    with serving(cycle_pipe, max_batch=1, max_queue=1, max_steps=100_000) as url:
        with httpx.Client(timeout=60) as http, http.stream("POST", f"{url}/v1/completions",
                                                           json={**slow, "stream": True}) as running:
            assert running.status_code == 200
            # the impatient client: a plain request on its own connection, closed by this test once
            # the queue is seen full (a client-side timeout raced the queueing on a busy machine)
            impatient = _raw_post(url, "/v1/completions", slow)
            deadline = time.monotonic() + 60
            while metric(url, "queue_depth") < 1 or metric(url, "batch_rows") < 1:
                assert time.monotonic() < deadline, "the requests did not start"
                time.sleep(0.02)
            with pytest.raises(openai.RateLimitError, match="queue is full"):
                client(url).completions.create(model="tiny", prompt="abc", extra_body={"steps": 4})
        # the stream is closed: its rows leave the batch; then the impatient client gives up
        impatient.close()
        deadline = time.monotonic() + 60
        while metric(url, "batch_rows") > 0 or metric(url, "queue_depth") > 0:
            assert time.monotonic() < deadline, "rows of clients that left stayed in the batch"
            time.sleep(0.05)
        assert metric(url, "cancelled_total") == 2 and metric(url, "finished_total") == 0
    with serving(cycle_pipe, timeout=0.3, max_steps=100_000) as url:
        r = httpx.post(f"{url}/v1/completions", json=slow, timeout=30)
        assert r.status_code == 408 and "time limit" in r.json()["error"]["message"]


def test_sigterm_drains_the_requests_in_flight(cycle_pipe, tmp_path):
    """``textdiffusion serve`` stopped by SIGTERM while a request runs: the request still gets its
    whole answer, no new request is taken meanwhile, and the process exits 0 within a bounded time
    (uvicorn alone re-raises the signal: exit -15)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "textdiffusion", "serve", str(cycle_pipe.run.run_dir), "--port", "0",
                             "--log-level", "warning", "--threads", "1",
                             "--max-steps", "5000"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True)
        reader.start()
        url, deadline = None, time.monotonic() + 60
        while url is None:
            assert time.monotonic() < deadline and proc.poll() is None, "the server did not start"
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=0.5)
                if "serving" in line:
                    url = line.split(" on ")[-1].strip()
        result = {}

        def slow():
            r = httpx.post(f"{url}/v1/completions", json={"prompt": "abc", "max_tokens": 20, "steps": 3000,
                                                          "sampler": "ancestral", "cache": False, "seed": 0}, timeout=60)
            result["status"], result["text"] = r.status_code, r.json()["choices"][0]["text"]

        t = threading.Thread(target=slow)
        t.start()
        deadline = time.monotonic() + 60
        while metric(url, "batch_rows") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        while True:  # no new request is taken: 503 while draining, then the listening socket closes
            try:
                r = httpx.post(f"{url}/v1/completions", json={"prompt": "abc"}, timeout=30)
            except httpx.TransportError:
                break
            assert r.status_code == 503, r.text
            assert time.monotonic() < deadline + 60, "the listening socket stayed open"
            time.sleep(0.05)
        assert t.is_alive()  # the request in flight still runs after the socket closed
        t.join(60)
        assert result.get("status") == 200 and len(result["text"]) == 20
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        reader.join(5)  # (it ends at the pipe's end of file, once the process has gone)
        proc.stderr.close()


def test_metrics_are_prometheus_text(cycle_pipe):
    """/metrics counts requests by endpoint and status, and the tokens generated."""
    with serving(cycle_pipe) as url:
        httpx.post(f"{url}/v1/completions", json={"prompt": "abc", "max_tokens": 5, "steps": 5}, timeout=30)
        httpx.post(f"{url}/v1/completions", json={"prompt": "abc", "steps": 0}, timeout=30)
        text = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'textdiffusion_requests_total{endpoint="/v1/completions",status="200"} 1' in text
        assert 'textdiffusion_requests_total{endpoint="/v1/completions",status="400"} 1' in text
        assert metric(url, "tokens_total") == 5
        assert "# TYPE textdiffusion_queue_depth gauge" in text


def test_an_ar_model_served_with_a_drafter_gives_its_own_texts(small_runs, cycle_dir):
    """`serve AR_RUN --draft RUN` (``Pipeline.draft_with``): requests that name no sampler are
    decoded speculatively, the masked drafter proposing and the AR model verifying, and get at
    temperature 0 exactly the AR sampler's texts, alone, eight at once and streamed; at
    temperature 1 a seeded request gets the same text alone and among others; /v1/models names the
    drafter; a request may still ask for plain AR. Catches a server that ignores the drafter
    (planted: draft_with leaving the default sampler: the usage shows one call per token).
    (Rows of other settings kept apart in one batch: test_speculative.py.)"""
    pipe = Pipeline.from_pretrained(small_runs["ar"]).draft_with(cycle_dir, draft_len=4)
    bodies = [{"prompt": "abcdefgh"[i % 8 :][: 1 + i % 3], "max_tokens": 6 + 2 * i, "temperature": 0, "seed": i}
              for i in range(8)]
    with serving(pipe) as url:
        assert httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["draft"] == str(cycle_dir)
        plain = [httpx.post(f"{url}/v1/completions", json={**b, "sampler": "ar"}, timeout=60).json() for b in bodies]
        alone = [httpx.post(f"{url}/v1/completions", json=b, timeout=60).json() for b in bodies]
        assert [a["choices"][0]["text"] for a in alone] == [p["choices"][0]["text"] for p in plain]
        assert all(a["usage"]["nfe"] < p["usage"]["nfe"] for a, p in zip(alone, plain)), (alone, plain)
        sampled = [{**b, "temperature": 1.0, "max_tokens": 16} for b in bodies]
        sampled_alone = [httpx.post(f"{url}/v1/completions", json=b, timeout=60).json()["choices"][0]["text"]
                         for b in sampled]
        together = all_at_once(url, bodies + sampled)
        assert metric(url, "failed_total") == 0
        assert together == [a["choices"][0]["text"] for a in alone] + sampled_alone
        shown = []
        for chunk in client(url).completions.create(model="tiny", prompt="abc", max_tokens=12, temperature=0,
                                                     stream=True):
            shown += [(shown[-1] if shown else "") + ch.text for ch in chunk.choices if ch.text]
        want = httpx.post(f"{url}/v1/completions", json={"prompt": "abc", "max_tokens": 12, "temperature": 0,
                                                         "sampler": "ar"}, timeout=60).json()["choices"][0]["text"]
        assert shown[-1] == want and all(want.startswith(s) for s in shown)


@pytest.mark.parametrize("field, value", [("temperature", 1e-320), ("temperature", 1e308), ("temperature", 1e-7)])
def test_a_finite_but_unusable_number_is_a_400_naming_the_field(cycle_pipe, field, value):
    """Finite numbers a sampler cannot use are refused before they reach a batch: a temperature
    that overflows the logits once divided by it (1e-320, 1e308) is a 400 naming the field, through
    the official client. Catches the range check gone: 1e-320 made every probability NaN and a 500
    for every request batched with it."""
    with serving(cycle_pipe) as url:
        with pytest.raises(openai.BadRequestError) as err:
            client(url).completions.create(model="tiny", prompt="abc", max_tokens=4, extra_body={field: value})
    assert err.value.body["param"] == field and f"{field} must be 0 (greedy) or between" in err.value.body["message"] \
        or f"{field} must be <= " in err.value.body["message"]


def test_a_request_that_fails_inside_a_batched_step_fails_alone(cycle_pipe, monkeypatch):
    """If a request still fails inside a step it shares, only it fails: the batch is put back as it
    was and each request is stepped alone, so the others are answered (200) with exactly the texts
    they get alone (sampled at temperature 1: their generators are put back too), and the next
    steps batch them again. The six requests are queued before the scheduler runs (it is driven
    here), so they share their first step by construction. A fault is planted for the request
    with top_k=7 (no real request fails there any more). Catches the old behaviour (every request
    of the step got the fault's 500) and a retry that does not restore the rows or their
    generators (the innocent texts differ from alone)."""
    from textdiffusion.sampling.ancestral import AncestralSampler

    real = AncestralSampler._filtered  # (where a step filters a row's logits for its draws)

    def faulty(self, *args, **kwargs):
        if self.top_k == 7:
            raise RuntimeError("planted fault")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AncestralSampler, "_filtered", faulty)
    good = [{"prompt": "abc"[: 1 + i % 3], "max_tokens": 6 + i, "seed": i, "temperature": 1.0, "steps": 8,
             "sampler": "ancestral"} for i in range(5)]
    bad = {"prompt": "ab", "max_tokens": 6, "seed": 9, "sampler": "ancestral", "steps": 8, "top_k": 7}
    with serving(cycle_pipe) as url:
        alone = [client(url).completions.create(model="tiny", **_openai(b)).choices[0].text for b in good]
    answers: list = [None] * 6
    with serving(cycle_pipe, scheduler_thread=False) as url:
        scheduler = url.app.state.scheduler
        scheduler.bind_here()  # accepts jobs; nothing runs them until drive() below

        def post(i, body):
            try:
                answers[i] = client(url).completions.create(model="tiny", **_openai(body)).choices[0].text
            except openai.APIStatusError as exc:
                answers[i] = exc.status_code

        threads = [threading.Thread(target=post, args=(i, b)) for i, b in enumerate([*good, bad])]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while scheduler.queue_depth < 6:
            assert time.monotonic() < deadline, "the requests did not arrive"
            time.sleep(0.02)
        driver = threading.Thread(target=scheduler.drive, args=(lambda: all(a is not None for a in answers),))
        driver.start()
        for t in threads:
            t.join(60)
        scheduler.stop()
        driver.join(30)
        assert scheduler.metrics.totals["failed"] == 1 and scheduler.metrics.totals["finished"] == 5
    assert answers[:5] == alone and answers[5] == 500


def _raw_post(url: str, path: str, body: dict):
    """A POST sent on a socket of its own, its answer never read: the caller closes the socket
    (a client that goes away at a moment the test chooses)."""
    import json
    import socket

    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def _openai(body: dict) -> dict:
    """A request body as the openai client's keyword arguments (ours in extra_body)."""
    own = {k: v for k, v in body.items() if k not in ("prompt", "max_tokens", "temperature")}
    return {"prompt": body["prompt"], "max_tokens": body["max_tokens"], "temperature": body.get("temperature"),
            "extra_body": own}


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(cycle_dir):
    """``textdiffusion serve`` on a port something already listens on says so in one line and
    exits 2, before loading the model. Catches the old behaviour: uvicorn logged its bind error,
    ended its thread, and the command exited 0."""
    import socket

    from commands import in_process

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = in_process("serve", cycle_dir, "--port", port)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"textdiffusion: error: port {port} on 127.0.0.1 is already in use: stop what "
                                   f"listens there, or choose another --port")
