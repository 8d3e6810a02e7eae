"""Benchmark: our samplers on public checkpoints against each model's own reference loop.

    python bench/adapters.py                 # writes bench/out/adapters.json, prints the table

A random LLaDA and a random Dream checkpoint in their real layouts (tests/public_models.py, made
larger here: d_model 256, 4 layers, GQA 8/4 heads), loaded through our adapters. For each: the
model's published greedy decoding loop, written from its public code (LLaDA's generate.py with
low-confidence remasking in blocks; Dream's _sample with entropy ordering), against ours on the
same weights and prompt: the same rule (semi-AR confidence for LLaDA, entropy with the "dream"
schedule for Dream), then threshold decoding (0.9) without a cache and with the prefix and dual
caches. Reported: network calls, seconds (the fastest of 7 interleaved rounds after a warm-up), and the share of the new tokens equal
to the reference's (100% for the same rule: the same output; threshold decoding is another
rule: it reveals every candidate above 0.9 at once, so it makes fewer calls and another text).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

import public_dit as pd  # noqa: E402
import public_models as pm  # noqa: E402
from common import cpu_model  # noqa: E402

from textdiffusion.control.continuation import continue_prompt  # noqa: E402
from textdiffusion.runs import load_run  # noqa: E402

PROMPT = "the cat sat on the"
LENGTH, BLOCK = 64, 16


def interleaved(fns: dict, reps: int = 7) -> dict:
    """{name: (output, seconds)}: every function once to warm up, then ``reps`` rounds that run
    each in turn (so a slow moment of a shared machine hits them alike); the fastest round of
    each, the least noisy estimate of its own cost."""
    out = {name: fn() for name, fn in fns.items()}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: (out[name], best[name]) for name in fns}


def count_calls(model, fn):
    calls = [0]
    hook = model.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    try:
        out = fn()
    finally:
        hook.remove()
    return out, calls[0]


def ours(run, kwargs):
    return lambda: continue_prompt(run, PROMPT, length=LENGTH, **kwargs)[0]


def rows_for(name: str, run, reference, decoders: dict) -> list[dict]:
    """The reference loop (greedy) and ours at temperature 0: the same rule gives the same tokens."""
    ids = torch.from_numpy(run.tokenizer.encode(PROMPT))[None]
    fns = {"reference loop": lambda: reference(ids)}
    fns.update({label: ours(run, {**kwargs, "temperature": 0.0}) for label, kwargs in decoders.items()})
    timed = interleaved(fns)
    ref = timed["reference loop"][0][0, ids.shape[1]:]
    rows = [{"model": name, "decoder": "reference loop", "calls": LENGTH, "seconds": timed["reference loop"][1],
             "agree": 1.0}]
    for label in decoders:
        out, seconds = timed[label]
        _, calls = count_calls(run.model, fns[label])
        agree = float((out.tokens[0, ids.shape[1]:] == ref).double().mean())
        rows.append({"model": name, "decoder": label, "calls": calls, "seconds": seconds, "agree": agree})
    return rows


def mdlm_rows(run, model) -> list[dict]:
    """MDLM's own loop is stochastic (a Gumbel draw per position per step), so outputs are not
    compared; its ddpm_cache predictor skips the call of a step that changed nothing, as our
    ancestral sampler does. 128 steps for 64 tokens: many steps reveal nothing."""
    ids = torch.from_numpy(run.tokenizer.encode(PROMPT))
    steps = 2 * LENGTH
    gen = torch.Generator().manual_seed(0)
    ref_label = f"reference loop (ddpm_cache, {steps} steps)"
    fns = {ref_label: lambda: pd.mdlm_sample(model, ids, LENGTH, steps, gen),
           f"ancestral ({steps} steps)": ours(run, dict(sampler="ancestral", steps=steps)),
           "semi-ar (64 steps)": ours(run, dict(sampler="semi-ar", block_length=BLOCK, steps=LENGTH, temperature=0.0)),
           "threshold 0.9, dual cache": ours(run, dict(sampler="threshold", block_length=BLOCK, threshold=0.9,
                                                       kv_cache="dual", steps=LENGTH))}
    timed = interleaved(fns)
    rows = []
    for label, fn in fns.items():
        calls = timed[label][0][1] if label == ref_label else count_calls(run.model, fn)[1]
        rows.append({"model": "MDLM", "decoder": label, "calls": calls, "seconds": timed[label][1],
                     "agree": float("nan")})
    return rows


def main() -> None:
    torch.manual_seed(0)
    pm.LLADA.update(d_model=256, n_heads=8, n_kv_heads=4, n_layers=4, mlp_hidden_size=688)
    pm.DREAM.update(hidden_size=256, num_attention_heads=8, num_key_value_heads=4, num_hidden_layers=4,
                    intermediate_size=688)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        llada = pm.make_llada(Path(tmp) / "llada")
        run = load_run(Path(tmp) / "llada")
        threshold = dict(sampler="threshold", block_length=BLOCK, threshold=0.9, steps=LENGTH)
        rows += rows_for("LLaDA", run, lambda ids: pm.llada_generate(llada, ids, LENGTH, LENGTH, BLOCK, llada["mask_id"]),
                         {"semi-ar (same rule)": dict(sampler="semi-ar", block_length=BLOCK, steps=LENGTH),
                          "threshold 0.9": {**threshold, "kv_cache": "none"},
                          "threshold 0.9, prefix cache": {**threshold, "kv_cache": "prefix"},
                          "threshold 0.9, dual cache": {**threshold, "kv_cache": "dual"}})
        dream = pm.make_dream(Path(tmp) / "dream")
        run = load_run(Path(tmp) / "dream")
        rows += rows_for("Dream", run, lambda ids: pm.dream_generate(dream, ids, LENGTH, LENGTH, dream["mask_id"]),
                         {"entropy, schedule dream (same rule)": dict(sampler="entropy", schedule="dream", steps=LENGTH),
                          "threshold 0.9": {**threshold, "kv_cache": "none"},
                          "threshold 0.9, prefix cache": {**threshold, "kv_cache": "prefix"},
                          "threshold 0.9, dual cache": {**threshold, "kv_cache": "dual"}})
        pd.MDLM.update(hidden_dim=256, cond_dim=128, n_blocks=4, n_heads=8, model_length=128)
        mdlm = pd.make_mdlm(Path(tmp) / "mdlm")
        run = load_run(Path(tmp) / "mdlm")
        rows += mdlm_rows(run, mdlm)
    machine = f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapters.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(f"# {machine}; {LENGTH} new tokens after {PROMPT!r}, blocks of {BLOCK}")
    print("| model | decoder | network calls | seconds | time vs reference | new tokens as the reference's |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        ref = next(x for x in rows if x["model"] == r["model"] and x["decoder"].startswith("reference loop"))
        print(f"| {r['model']} | {r['decoder']} | {r['calls']} | {r['seconds']:.3f} | "
              f"{r['seconds'] / ref['seconds']:.2f}x | {'-' if r['agree'] != r['agree'] else format(r['agree'], '.0%')} |")


if __name__ == "__main__":
    main()
