"""Benchmark: one process against two (torchrun, gloo) on this machine's CPU cores.

    python bench/torchrun_cpu.py [--steps 60]

The shipped English recipe's model (4 x 256, context 256, batch 16) on the English corpus's
tokens, masked diffusion and the AR twin, each trained three ways for the same steps: one
process with one thread, one process with two threads, and ``torchrun --nproc_per_node 2``
with one thread each (DDP; the same global batch, so each process computes half of it).
Reports training tokens/s (the trainer's own count: optimisation steps only) and the scaling
efficiency: 2-process tokens/s over twice the 1-thread figure. Writes bench/out/torchrun_cpu.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, cpu_model  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def corpus() -> str:
    for name in ("tinyshakespeare.txt", "shakespeare.txt"):
        for path in SHARED.rglob(name):
            return str(path)
    return "stdlib"


def run(process: str, mode: str, steps: int, data: str, work: Path) -> float:
    out = work / f"{process}-{mode}"
    settings = ["--config", str(REPO / "configs" / "english.toml"), "--process", process, "--data", data, "--out",
                str(out), "--set", f"train.max_steps={steps}", "--set", "train.eval_every=100000", "--set",
                "train.ckpt_every=100000", "--set", "train.log_every=5", "--set", "train.cpu_bf16=false",
                "--set", "train.device=cpu", "--quiet"]
    if process == "ar":
        settings += ["--set", "model.time_cond=false"]
    threads = {"1x1": 1, "1x2": 2, "2x1": 1}[mode]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    settings += ["--set", f"train.threads={threads}"]
    if mode == "2x1":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "textdiffusion", "train", *settings]
    else:
        cmd = [sys.executable, "-m", "textdiffusion", "train", *settings]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line][-1]
    return last["tokens_per_second"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--processes", default="masked,ar", help="comma-separated: masked, ar (default both)")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "torchrun_cpu.json"))
    args = p.parse_args()
    data = corpus()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for process in args.processes.split(","):
            rates = {mode: run(process, mode, args.steps, data, Path(tmp)) for mode in ("1x1", "1x2", "2x1")}
            row = {"process": process, **{f"tokens_per_second_{k}": v for k, v in rates.items()},
                   "scaling_efficiency": rates["2x1"] / (2 * rates["1x1"]),
                   "two_processes_vs_two_threads": rates["2x1"] / rates["1x2"]}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    record = {"date": datetime.date.today().isoformat(), "machine": cpu_model(), "cores": os.cpu_count(),
              "data": data, "steps": args.steps, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(json.dumps(record))


if __name__ == "__main__":
    main()
