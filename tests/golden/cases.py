"""Golden outputs: the tokens every sampler gives, under fixed seeds, on tiny models this file
trains, for prompt, template (infill) and edit canvases and through the control functions.

The test (tests/test_golden.py) recomputes them and compares with ``outputs.json`` exactly, so a
reshape of the samplers, processes or control code that changes any draw shows up by name.
Everything runs in float64: two CPUs whose float32 kernels round differently (AVX-512 against
AVX2) would otherwise disagree on a borderline draw, and a golden file must not depend on the CPU.

Record anew (only for an intended change, named in the commit and the closing note):

    python tests/golden/cases.py --record
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from markov import MarkovChain, tokenizer  # noqa: E402

from textdiffusion.config import Config, ModelConfig, ProcessConfig, TrainConfig  # noqa: E402
from textdiffusion.control import edit, infill  # noqa: E402
from textdiffusion.control.continuation import continue_prompt  # noqa: E402
from textdiffusion.runs import load_run  # noqa: E402
from textdiffusion.training.trainer import train  # noqa: E402

OUTPUTS = HERE / "outputs.json"
PROCESSES = ("masked", "uniform", "gaussian", "sedd-absorb", "sedd-uniform", "block", "ar")
CONTEXT = 24

# (process, sampler, options): every sampler on every process it fits, with its option variants
SAMPLER_CASES = [
    ("masked", "ancestral", {}), ("masked", "ancestral", {"cache": False}),
    ("masked", "ancestral", {"top_k": 3, "top_p": 0.8}), ("masked", "ancestral", {"temperature": 0.0}),
    ("masked", "confidence", {}), ("masked", "confidence", {"schedule": "cosine"}),
    ("masked", "margin", {}), ("masked", "entropy", {}), ("masked", "random", {}),
    ("masked", "remdm", {}), ("masked", "remdm", {"eta": 0.3, "top_p": 0.9}),
    ("masked", "semi-ar", {"block_length": 4}), ("masked", "semi-ar", {"block_length": 5, "order": "margin"}),
    ("masked", "threshold", {"block_length": 4, "kv_cache": "none"}),
    ("masked", "threshold", {"block_length": 4, "kv_cache": "prefix"}),
    ("masked", "threshold", {"block_length": 4, "kv_cache": "dual", "threshold": 0.5}),
    ("uniform", "ancestral", {}), ("uniform", "euler", {}), ("uniform", "tau-leaping", {"top_k": 4}),
    ("gaussian", "ddpm", {}), ("gaussian", "ddim", {}), ("gaussian", "ddpm", {"temperature": 0.0}),
    ("sedd-absorb", "ancestral", {}), ("sedd-absorb", "euler", {}),
    ("sedd-uniform", "ancestral", {}), ("sedd-uniform", "euler", {}),
    ("block", "block", {}), ("block", "block", {"order": "confidence"}), ("block", "block", {"kv_cache": "none"}),
    ("ar", "ar", {}), ("ar", "ar", {"top_k": 2}), ("ar", "ar", {"temperature": 0.0}),
]
PROMPT, TEMPLATE, EDIT_TEXT = "abc", "ab[MASK:5]hab[MASK:3]d", "abcdefghabcdefgh"


@contextlib.contextmanager
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def train_runs(root: Path) -> dict:
    """One tiny model per process, 40 steps on a Markov chain (float64: see the module doc)."""
    mc = MarkovChain()
    splits = {"train": mc.sample(20_000, seed=1), "val": mc.sample(2_000, seed=2)}
    runs = {}
    with float64():
        for process in PROCESSES:
            cfg = Config(model=ModelConfig(n_layer=2, n_head=2, d_model=32, context=CONTEXT),
                         process=ProcessConfig(name=process, block_size=4),
                         train=TrainConfig(batch_size=16, max_steps=40, lr=3e-3, min_lr=3e-4, warmup_steps=5,
                                           eval_every=40, ckpt_every=40, log_every=40, eval_batches=2))
            out = root / process
            train(cfg, out, splits, tokenizer(), progress=False)
            runs[process] = load_run(out)
    return runs


def _attempt(fn, *args, **kwargs) -> dict:
    """The tokens and NFE of ``fn(*args, **kwargs)``, or the error it raised (refusals are behaviour too)."""
    try:
        out = fn(*args, **kwargs)
    except ValueError as e:
        return {"error": str(e)}
    gen = out.generation if hasattr(out, "generation") else out[0]
    texts = out.texts if hasattr(out, "texts") else out[1]
    return {"tokens": gen.tokens.tolist(), "nfe": gen.nfe, "texts": texts}


def outputs(runs: dict) -> dict:
    """Case name -> what it gave, for every sampler case on prompt, template and edit canvases."""
    result = {}
    with float64():
        for process, name, options in SAMPLER_CASES:
            run, kw = runs[process], {"sampler": name, **options}
            key = f"{process}/{name}/{json.dumps(options, sort_keys=True)}"
            result[f"{key}/prompt"] = _attempt(continue_prompt, run, PROMPT, length=12, steps=8, num=3, seed=5, **kw)
            result[f"{key}/no-prompt"] = _attempt(continue_prompt, run, "", length=10, steps=10, num=2, seed=6, **kw)
            result[f"{key}/stop-at-eot"] = _attempt(continue_prompt, run, PROMPT, length=16, steps=8, num=2, seed=7,
                                                    stop_at_eot=True, **kw)
            result[f"{key}/template"] = _attempt(infill, run, TEMPLATE, num=3, steps=8, seed=8, **kw)
            result[f"{key}/edit"] = _attempt(edit, run, EDIT_TEXT, 4, 11, strength=0.6, num=2, steps=6, seed=9, **kw)
        for process in PROCESSES:  # each run's own default sampler, variable-size holes
            result[f"{process}/default/variable-holes"] = _attempt(infill, runs[process], "ab[MASK:2-4]fgh", num=2,
                                                                   steps=6, seed=10, candidates=2)
    return result


def main(argv: list[str]) -> int:
    if argv != ["--record"]:
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        got = outputs(train_runs(Path(tmp)))
    OUTPUTS.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(got)} cases to {OUTPUTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
