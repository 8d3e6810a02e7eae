"""Benchmark: `textdiffusion serve` under load, step-level batching against one request at a time.

    python bench/serve.py                                          # english; 1, 8, 32 clients; 60 s each
    python bench/serve.py --models english,bench/out/ship-english-ar --json-out bench/out/serve.json
    python bench/serve.py --smoke                                  # seconds: does it work end to end

For each model (a shipped name or a run directory; an AR twin's run directory is passed the same
way and gets the "ar" sampler automatically) it first measures the offline reference in this
process, before any server runs (so the two never share the CPU): ``Pipeline.generate`` of 32
samples as one batch with torch threads = --threads, one warm-up call, then the median of 3 timed
calls; offline tokens/s = 32 * LENGTH / seconds. (The same as ``textdiffusion sample MODEL --num 32
--length LENGTH --steps STEPS --sampler SAMPLER --prompt PROMPT --threads T --json`` without the
process start-up.)

Then, for each mode (batching, --no-batching), it starts ``python -m textdiffusion serve MODEL
--port 0 --log-level warning --max-batch B --threads T`` (loopback only), reads its URL from the
"textdiffusion: serving NAME on http://..." line of its stderr, sends two warm-up requests, and for
each concurrency C of --clients runs C client threads (one httpx.Client each) for --seconds, each
sending POST /v1/completions in a loop: ``stream: true`` with ``stream_options: {"include_usage":
true}`` with --stream (the SSE lines parsed here), else whole answers. Per request: latency (send
to the answer, or to ``data: [DONE]``), time to first commit (the server's
``usage.time_to_first_commit_s``, or with --stream send to the first chunk whose choices[0].text
is not empty), completion tokens (usage; a continuation counts up to its end-of-text), errors (a
status other than 200, an error chunk, a missing [DONE] or usage chunk, an exception). Requests still in flight when the window
closes run to the end before the next level starts (their errors count; their tokens and
latencies do not). The server is stopped with SIGTERM at the end of each mode.

Per (model, mode, C): requests finished inside the window, aggregate tokens/s (positions decoded
by those requests, LENGTH each as offline counts them, / window seconds; the completion tokens,
cut at end-of-text, are reported per request beside it), p50 and p99 latency, p50 time to first commit, errors. Goals,
per model, at the largest C with batching: aggregate / offline >= 0.90 and aggregate(largest C)
/ aggregate(smallest C) >= 3. The client threads run in this process, on the same machine as the
server: on a small machine they take a share of its CPU (the figures are then a floor).
Prints the machine, a Markdown table and a JSON summary (also written to --json-out).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_model  # noqa: E402

MODES = ("batching", "no-batching")
SERVING = re.compile(r"textdiffusion: serving (.+) on (http://127\.0\.0\.1:\d+)")
OFFLINE_NUM = 32
OFFLINE_RUNS = 3


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


# the offline reference -------------------------------------------------------------------------
def offline(model: str, a) -> dict:
    """Warm ``Pipeline.generate`` of OFFLINE_NUM samples in one batch: median of OFFLINE_RUNS calls."""
    import torch

    from textdiffusion import Pipeline
    from textdiffusion.runtime import set_threads

    set_threads(a.threads)
    pipe = Pipeline.from_pretrained(model)
    process = pipe.config.process.name
    sampler = "ar" if process == "ar" else a.sampler
    options = {} if a.temperature is None else {"temperature": a.temperature}

    def call() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            pipe.generate(a.prompt, length=a.length, steps=a.steps, sampler=sampler, num=OFFLINE_NUM, seed=0,
                          **options)
        return time.perf_counter() - start

    call()  # warm-up
    times = [call() for _ in range(OFFLINE_RUNS)]
    seconds = statistics.median(times)
    return {"process": process, "sampler": sampler, "num": OFFLINE_NUM, "seconds": seconds, "runs": times,
            "tokens_per_second": OFFLINE_NUM * a.length / seconds}


# the server ------------------------------------------------------------------------------------
class Server:
    """``python -m textdiffusion serve`` in a subprocess; its URL read from its stderr."""

    def __init__(self, model: str, batching: bool, a):
        cmd = [sys.executable, "-m", "textdiffusion", "serve", model, "--port", "0", "--log-level", "warning",
               "--max-batch", str(a.max_batch), "--threads", str(a.threads)]
        if a.max_queue:
            cmd += ["--max-queue", str(a.max_queue)]
        if not batching:
            cmd.append("--no-batching")
        self.cmd = cmd
        self.lines: list[str] = []
        self.url: str | None = None
        self.name: str | None = None
        self._found = threading.Event()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:  # keeps draining stderr, so the pipe never fills
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            m = SERVING.search(line)
            if m and self.url is None:
                self.name, self.url = m.group(1), m.group(2)
                self._found.set()

    def wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not self._found.wait(0.25):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = (f"exited with status {self.proc.returncode}" if self.proc.poll() is not None
                       else f"did not print its URL within {timeout:g} s")
                self.stop()
                tail = "\n".join(self.lines[-20:])
                raise SystemExit(f"the server {why}: {' '.join(self.cmd)}\n{tail}")
        return self.url

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        return self.proc.returncode


# the clients -----------------------------------------------------------------------------------
def one_request(client, url: str, body: dict) -> dict:
    """One completion, streamed (``--stream``: time to first commit seen by the client) or not
    (the server's own ``usage.time_to_first_commit_s``): latency, time to first commit,
    completion tokens, error."""
    return (streamed if body.get("stream") else whole)(client, url, body)


def whole(client, url: str, body: dict) -> dict:
    start = time.perf_counter()
    first = tokens = error = None
    try:
        r = client.post(url + "/v1/completions", json=body)
        if r.status_code != 200:
            error = f"HTTP {r.status_code}: {r.text[:200]}"
        else:
            usage = r.json()["usage"]
            tokens, first = usage["completion_tokens"], usage["time_to_first_commit_s"]
    except Exception as exc:  # noqa: BLE001 (any failure is an error of this request)
        error = f"{type(exc).__name__}: {exc}"
    end = time.perf_counter()
    return {"end": end, "latency": end - start, "ttfc": first, "tokens": tokens, "error": error}


def streamed(client, url: str, body: dict) -> dict:
    start = time.perf_counter()
    first = tokens = error = None
    try:
        with client.stream("POST", url + "/v1/completions", json=body) as r:
            if r.status_code != 200:
                r.read()
                error = f"HTTP {r.status_code}: {r.text[:200]}"
            else:
                done = False
                for line in r.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        error = f"error chunk: {chunk['error'].get('message')}"
                        continue
                    choices = chunk.get("choices") or []
                    if first is None and choices and choices[0].get("text"):
                        first = time.perf_counter() - start
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                if error is None and not done:
                    error = "the stream ended without data: [DONE]"
                elif error is None and tokens is None:
                    error = "no usage chunk"
    except Exception as exc:  # noqa: BLE001 (any failure is an error of this request)
        error = f"{type(exc).__name__}: {exc}"
    end = time.perf_counter()
    return {"end": end, "latency": end - start, "ttfc": first, "tokens": tokens, "error": error}


def request_body(a, sampler: str, name: str | None, seed: int) -> dict:
    body = {"prompt": a.prompt, "max_tokens": a.length, "steps": a.steps, "sampler": sampler, "seed": seed}
    if a.stream:
        body.update(stream=True, stream_options={"include_usage": True})
    if name:
        body["model"] = name
    if a.temperature is not None:
        body["temperature"] = a.temperature
    return body


def load(url: str, name: str, sampler: str, clients: int, a) -> dict:
    """``clients`` threads sending requests in a loop for a.seconds; the figures of the window."""
    import httpx

    records: list[list[dict]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    window: dict[str, float] = {}

    def worker(k: int) -> None:
        timeout = httpx.Timeout(connect=10.0, read=600.0, write=10.0, pool=10.0)
        with httpx.Client(timeout=timeout) as client:
            barrier.wait()
            seed = k
            while time.perf_counter() < window["end"]:
                records[k].append(one_request(client, url, request_body(a, sampler, name, seed)))
                seed += clients

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    window["start"] = time.perf_counter()
    window["end"] = window["start"] + a.seconds
    barrier.wait()
    for t in threads:
        t.join()
    tail = time.perf_counter() - window["end"]
    every = [r for rs in records for r in rs]
    inside = [r for r in every if r["error"] is None and r["end"] <= window["end"]]
    tokens = sum(r["tokens"] for r in inside)
    decoded = len(inside) * a.length  # positions decoded: what offline counts (32 x LENGTH), end-of-text or not
    errors = [r["error"] for r in every if r["error"] is not None]
    ttfc = [r["ttfc"] for r in inside if r["ttfc"] is not None]
    return {"clients": clients, "seconds": a.seconds, "requests": len(inside), "requests_sent": len(every),
            "completion_tokens": tokens, "decoded_tokens": decoded, "tokens_per_second": decoded / a.seconds,
            "tokens_per_request": tokens / len(inside) if inside else None,
            "p50_latency_s": percentile([r["latency"] for r in inside], 50),
            "p99_latency_s": percentile([r["latency"] for r in inside], 99),
            "p50_first_commit_s": percentile(ttfc, 50), "errors": len(errors), "error_examples": errors[:3],
            "tail_s": tail}


def warm_up(url: str, name: str, sampler: str, a) -> str:
    """Two requests before the measured window; the first error, if any."""
    import httpx

    with httpx.Client(timeout=httpx.Timeout(600.0, connect=10.0)) as client:
        for seed in (-1, -2):
            r = one_request(client, url, request_body(a, sampler, name, seed))
            if r["error"]:
                return r["error"]
    return ""


def served_process(url: str) -> str:
    import httpx

    r = httpx.get(url + "/v1/models", timeout=30.0)
    r.raise_for_status()
    return r.json()["data"][0]["process"]


# the report ------------------------------------------------------------------------------------
def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(record: dict) -> str:
    lines = ["| model | mode | clients | requests | tokens/s | tokens/request | p50 latency s | p99 latency s | "
             "p50 first commit s | errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in record["models"].items():
        lines.append(f"| {name} | offline (Pipeline.generate, num {m['offline']['num']}) | - | - | "
                     f"{m['offline']['tokens_per_second']:.1f} | {record['length']} | {m['offline']['seconds']:.2f} | - "
                     f"| - | - |")
        for mode in MODES:
            for r in m["load"].get(mode, []):
                lines.append(f"| {name} | {mode} | {r['clients']} | {r['requests']} | {r['tokens_per_second']:.1f} | "
                             f"{fmt(r['tokens_per_request'], '.1f')} | {fmt(r['p50_latency_s'])} | "
                             f"{fmt(r['p99_latency_s'])} | {fmt(r['p50_first_commit_s'])} | {r['errors']} |")
    return "\n".join(lines)


def goals(m: dict) -> dict:
    rows = {r["clients"]: r for r in m["load"].get("batching", [])}
    if not rows:
        return {}
    hi, lo = max(rows), min(rows)
    agg_hi, agg_lo = rows[hi]["tokens_per_second"], rows[lo]["tokens_per_second"]
    vs_offline = agg_hi / m["offline"]["tokens_per_second"]
    scaling = agg_hi / agg_lo if agg_lo else None
    return {"clients": hi, "baseline_clients": lo,
            "aggregate_over_offline": vs_offline, "aggregate_over_offline_met": vs_offline >= 0.90,
            "scaling": scaling, "scaling_met": scaling is not None and scaling >= 3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="english", help="comma-separated model names or run directories")
    p.add_argument("--clients", default="1,8,32", help="comma-separated concurrency levels (default 1,8,32)")
    p.add_argument("--seconds", type=float, default=60.0, help="measured window per level (default 60)")
    p.add_argument("--prompt", default="ROMEO:")
    p.add_argument("--length", type=int, default=64, help="max_tokens / --length (default 64)")
    p.add_argument("--steps", type=int, default=32, help="denoising steps (default 32)")
    p.add_argument("--sampler", default="confidence", help="default confidence; an AR model always uses ar")
    p.add_argument("--temperature", type=float, default=None, help="default: the model's own (its card)")
    p.add_argument("--threads", type=int, default=2, help="torch threads, offline and in the server (default 2)")
    p.add_argument("--max-batch", type=int, default=32, help="the server's --max-batch (default 32)")
    p.add_argument("--max-queue", type=int, default=0,
                   help="the server's --max-queue (default: the server's own, 64; raised to the most clients)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: batching, no-batching (default both)")
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds to wait for the server's URL")
    p.add_argument("--json-out", default=None, metavar="FILE", help="also write the JSON summary here")
    p.add_argument("--stream", action="store_true",
                   help="stream the completions (SSE parsed here: time to first commit as the client sees it; the "
                        "parsing takes client CPU from the server on a small machine); default: whole answers, "
                        "time to first commit from the server's usage")
    p.add_argument("--smoke", action="store_true", help="a tiny run: clients 1,2, 2 s, length 16, 8 steps")
    a = p.parse_args()
    if a.smoke:
        a.clients, a.seconds, a.length, a.steps = "1,2", 2.0, 16, 8
    levels = [int(c) for c in a.clients.split(",") if c.strip()]
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if not levels or min(levels) < 1 or any(m not in MODES for m in modes):
        p.error("--clients takes whole numbers >= 1; --modes takes batching, no-batching")
    if not a.max_queue and max(levels) > 64:
        a.max_queue = max(levels)
    models = [m.strip() for m in a.models.split(",") if m.strip()]

    import torch

    flags = cpu_flags()
    record = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": cpu_model(),
              "avx512_bf16": "avx512_bf16" in flags, "cores": os.cpu_count(), "python": platform.python_version(),
              "torch": torch.__version__, "threads": a.threads, "max_batch": a.max_batch, "prompt": a.prompt,
              "length": a.length, "steps": a.steps, "sampler": a.sampler, "temperature": a.temperature,
              "seconds": a.seconds, "clients": levels, "smoke": a.smoke, "models": {}}
    print(f"# bench/serve.py  {record['date']}")
    print(f"machine: {record['machine']} ({record['cores']} cores; avx512_bf16: "
          f"{'yes' if record['avx512_bf16'] else 'no'}); python {record['python']}, torch {record['torch']}, "
          f"{a.threads} torch threads")
    print(f"requests: prompt {a.prompt!r}, {a.length} tokens, {a.steps} steps, sampler {a.sampler}, "
          f"temperature {'(the model card)' if a.temperature is None else a.temperature}; "
          f"clients {levels}, {a.seconds:g} s each\n", flush=True)

    for model in models:
        off = offline(model, a)
        print(f"{model}: offline {off['tokens_per_second']:.1f} tokens/s ({OFFLINE_NUM} x {a.length} tokens in "
              f"{off['seconds']:.2f} s, median of {OFFLINE_RUNS}; process {off['process']}, sampler {off['sampler']})",
              flush=True)
        m = {"offline": off, "load": {}}
        for mode in modes:
            server = Server(model, mode == "batching", a)
            try:
                url = server.wait_ready(a.start_timeout)
                process = served_process(url)
                sampler = "ar" if process == "ar" else a.sampler
                m["served_name"], m["process"], m["sampler"] = server.name, process, sampler
                why = warm_up(url, server.name, sampler, a)
                if why:
                    raise SystemExit(f"{model} ({mode}): the warm-up request failed: {why}\n"
                                     + "\n".join(server.lines[-20:]))
                rows = m["load"][mode] = []
                for clients in levels:
                    r = load(url, server.name, sampler, clients, a)
                    rows.append(r)
                    print(f"{model} {mode} {clients} clients: {r['requests']} requests, "
                          f"{r['tokens_per_second']:.1f} tokens/s, p50 {fmt(r['p50_latency_s'])} s, "
                          f"p99 {fmt(r['p99_latency_s'])} s, first commit p50 {fmt(r['p50_first_commit_s'])} s, "
                          f"{r['errors']} errors (tail {r['tail_s']:.1f} s)"
                          + (f": {r['error_examples']}" if r["errors"] else ""), flush=True)
            finally:
                m.setdefault("server_exit", {})[mode] = server.stop()
        m["goals"] = goals(m)
        record["models"][model] = m

    print()
    print(markdown(record))
    print()
    for model, m in record["models"].items():
        g = m["goals"]
        if not g:
            continue
        print(f"{model}: at {g['clients']} clients with batching, aggregate / offline = "
              f"{g['aggregate_over_offline']:.2f} (goal >= 0.90: {'met' if g['aggregate_over_offline_met'] else 'missed'}); "
              f"aggregate({g['clients']}) / aggregate({g['baseline_clients']}) = {fmt(g['scaling'])} "
              f"(goal >= 3: {'met' if g['scaling_met'] else 'missed'})")
    errors = sum(r["errors"] for m in record["models"].values() for rows in m["load"].values() for r in rows)
    record["errors"] = errors
    summary = json.dumps(record, indent=1)
    print()
    print(summary)
    if a.json_out:
        out = Path(a.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(summary + "\n")
    if errors:
        raise SystemExit(f"{errors} requests failed")


if __name__ == "__main__":
    main()
