"""Benchmark: training and sampling on one GPU, masked diffusion against its AR twin.

    python bench/gpu.py                 # on a CUDA machine: under 8 minutes on one H100/H200
    python bench/gpu.py --smoke         # anywhere (CPU): a tiny model for seconds, to know it runs
    python bench/gpu.py --scarce --corpus FILE [--resume]   # the scarce-data grid sized for one GPU

Trains a GPT-2-small-sized model (12 layers x 768, context 1024, vocabulary 50,304: GPT-2's,
padded to a multiple of 64) on random tokens (throughput does not depend on the text) with the
masked process, with the AR twin and with block diffusion, each for ``--train-seconds`` through
the real training loop (``training.trainer.train``: bf16 autocast, fused AdamW, SDPA flash
kernels, optional ``--compile``), and reports tokens/s, the diffusion/AR ratio, MFU against
the device's peak and peak memory. Then the 256-token sampling table at batch 1 and 32: the AR
twin with its KV cache, block diffusion with its exact cache, and Fast-dLLM threshold decoding
with the dual cache on the masked model. Prints one JSON summary (and writes it to ``--out``).

Goals on an H100/H200: MFU >= 45 % in bf16, diffusion tokens/s >= 0.95x the AR twin's.

``--scarce`` is the other GPU run: ``bench/scarce_data.py --gpu`` (diffusion against its
regularized AR twin at 100k-1M unique tokens, hundreds of epochs), with every further argument
passed on to it. ``../shared`` does not travel to the GPU machine: copy the corpus and name it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, cpu_model  # noqa: E402


def random_text_tokenizer(vocab: int):
    """A character tokenizer of exactly ``vocab`` ids (CJK code points; the special tokens
    included) for throughput runs on random ids: a real tokenizer, so the runs save and load."""
    from textdiffusion.tokenizers import CharTokenizer

    extra = CharTokenizer(["a"]).vocab_size - 1
    return CharTokenizer([chr(0x4E00 + i) for i in range(vocab - extra)])


def settings(args) -> dict:
    if args.smoke:
        return {"n_layer": 2, "n_head": 2, "d_model": 64, "context": 64, "vocab": 512, "batch": 8, "steps": 6,
                "sample_tokens": 32, "batches": (1, 4)}
    return {"n_layer": 12, "n_head": 12, "d_model": 768, "context": 1024, "vocab": 50_304, "batch": args.batch,
            "steps": 10_000, "sample_tokens": 256, "batches": (1, 32)}


def train_one(process: str, s: dict, args, work: Path, tok) -> dict:
    from textdiffusion.config import Config, ModelConfig, ProcessConfig, TrainConfig
    from textdiffusion.training.trainer import train

    cfg = Config(model=ModelConfig(n_layer=s["n_layer"], n_head=s["n_head"], d_model=s["d_model"],
                                   context=s["context"]),
                 process=ProcessConfig(name=process, **({"block_size": 16} if process == "block" else {})),
                 train=TrainConfig(batch_size=s["batch"], max_steps=args.train_steps or s["steps"],
                                   max_seconds=0.0 if args.train_steps else args.train_seconds,
                                   warmup_steps=10, eval_every=10**9, ckpt_every=10**9, log_every=5,
                                   eval_batches=1, device=args.device, compile=args.compile, seed=0))
    rng = np.random.default_rng(0)
    n = max(s["batch"] * (s["context"] + 1) * 64, 200_000)
    data = rng.integers(0, tok.base_size, n).astype(np.uint16 if tok.vocab_size < 65536 else np.uint32)
    out = work / process
    result = train(cfg, out, {"train": data, "val": data[: 4 * (s["context"] + 1) * s["batch"]]}, tok, progress=False)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in logged if "loss" in r][1:] or [r for r in logged if "loss" in r]
    mfu = [r["mfu"] for r in steady if r.get("mfu") is not None]
    return {"process": process, "steps": result.step, "tokens_per_second": result.tokens_per_second,
            "mfu": mfu[-1] if mfu else None, "peak_memory_gb": result.peak_memory_bytes / 1e9,
            "final_loss": result.train_loss, "run": str(out)}


def sample_table(runs: dict, s: dict, args) -> list[dict]:
    from textdiffusion import Pipeline

    rows = []
    cases = [("ar", "ar", {}), ("block", "block", {}), ("masked", "threshold", {"kv_cache": "dual", "threshold": 0.9})]
    for process, sampler, options in cases:
        pipe = Pipeline.from_pretrained(runs[process], device=args.device)
        for batch in s["batches"]:
            steps = s["sample_tokens"] if sampler != "ar" else None
            pipe.generate(length=min(16, s["sample_tokens"]), num=batch, sampler=sampler, steps=steps and 16,
                          **options)  # warm-up
            if args.device != "cpu" and torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            res = pipe.generate(length=s["sample_tokens"], num=batch, sampler=sampler, steps=steps, **options)
            if args.device != "cpu" and torch.cuda.is_available():
                torch.cuda.synchronize()
            sec = time.perf_counter() - start
            rows.append({"sampler": f"{sampler}" + (" + dual cache" if options else ""), "process": process,
                         "batch": batch, "tokens": s["sample_tokens"], "seconds": sec,
                         "tokens_per_second": batch * s["sample_tokens"] / sec, "network_calls": res.nfe})
    ar = {r["batch"]: r["tokens_per_second"] for r in rows if r["process"] == "ar"}
    for r in rows:
        r["vs_ar"] = r["tokens_per_second"] / ar[r["batch"]]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU for seconds (checks the script)")
    p.add_argument("--train-seconds", type=float, default=None, help="per process (default 100; smoke: 3)")
    p.add_argument("--train-steps", type=int, default=None,
                   help="train each process exactly this many steps, with no time budget (the tests: a count, not seconds)")
    p.add_argument("--batch", type=int, default=16, help="training batch (rows of 1024 tokens; default 16)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (adds compile time)")
    p.add_argument("--device", default=None, help="default cuda if available, else cpu")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "gpu.json"))
    p.add_argument("--scarce", action="store_true", help="run the scarce-data grid sized for one GPU instead "
                                                         "(bench/scarce_data.py --gpu; the other arguments "
                                                         "go to that script: --corpus, --resume, --plan, --out ...)")
    if "--scarce" in sys.argv[1:]:  # every other argument (--out included) belongs to scarce_data.py
        script = str(Path(__file__).resolve().parent / "scarce_data.py")
        os.execv(sys.executable, [sys.executable, script, "--gpu", *(a for a in sys.argv[1:] if a != "--scarce")])
    args = p.parse_args()
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.train_seconds is None:
        args.train_seconds = 3.0 if args.smoke else 100.0
    if not args.smoke and args.device == "cpu":
        raise SystemExit("bench/gpu.py: no GPU here; run it with --smoke to check it on the CPU")
    s = settings(args)
    tok = random_text_tokenizer(s["vocab"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_rows = [train_one(process, s, args, work, tok) for process in ("masked", "ar", "block")]
        runs = {r["process"]: r.pop("run") for r in train_rows}
        try:
            sampling = sample_table(runs, s, args)
        except Exception as exc:  # noqa: BLE001 - the training table is still worth printing
            sampling = [{"error": f"{type(exc).__name__}: {exc}"}]
    by = {r["process"]: r for r in train_rows}
    device = torch.cuda.get_device_name() if args.device != "cpu" else cpu_model()
    summary = {
        "date": datetime.date.today().isoformat(), "device": device, "torch": torch.__version__,
        "python": platform.python_version(), "smoke": args.smoke,
        "model": {k: s[k] for k in ("n_layer", "n_head", "d_model", "context", "vocab")}, "train_batch": s["batch"],
        "train_seconds_each": None if args.train_steps else args.train_seconds, "train_steps": args.train_steps, "compile": args.compile,
        "training": train_rows,
        "diffusion_vs_ar_tokens_per_second": by["masked"]["tokens_per_second"] / by["ar"]["tokens_per_second"],
        "sampling": sampling, "seconds": time.perf_counter() - t0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
