"""Benchmark: AR -> masked diffusion conversion against the same model from scratch, on the Markov
chain of tests/markov.py (first order: true window entropy 1.993 bits/token; ``--order 2
--concentration 0.1``: the chain of tests/test_adapt.py's known-answer test, 1.197).

    python bench/convert_markov.py [--steps 100,200] [--order 2 --concentration 0.1 --ar-steps 600]
                                   [--variants "scratch, shift;converted"] [--seed 0]

The AR twin of tests/test_markov.py (2 x 64, context 32, 300 steps), then for each step budget N:
masked diffusion from scratch (with and without the logits shift: the converted model's own
architecture) and converted from the twin (the logits shift; with and without
attention annealing over N/2 steps; also a lower learning rate, and no shift), the same
optimiser, data and schedule. Reports the held-out ELBO in bits/token (4 Monte Carlo draws,
256 windows) with its standard error. Writes bench/out/convert_markov.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import REPO, cpu_model  # noqa: E402
from markov import MarkovChain, tokenizer  # noqa: E402

CONTEXT = 32


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", default="100,200")
    p.add_argument("--order", type=int, default=1, help="the chain's order (tokens of context)")
    p.add_argument("--concentration", type=float, default=0.25, help="Dirichlet concentration of its rows")
    p.add_argument("--ar-steps", type=int, default=300, help="the AR twin's training steps")
    p.add_argument("--seed", type=int, default=0, help="training seed (every model)")
    p.add_argument("--variants", default="", help="a subset of the variants, separated by semicolons (default all)")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "convert_markov.json"))
    args = p.parse_args()
    from textdiffusion.config import Config, ModelConfig, ProcessConfig, TrainConfig
    from textdiffusion.evaluation import evaluate_likelihood
    from textdiffusion.runs import load_run
    from textdiffusion.training.recipe import finetune_config
    from textdiffusion.training.trainer import train

    mc = MarkovChain(concentration=args.concentration, order=args.order)
    size = 100_000 if args.order == 1 else 200_000
    splits = {"train": mc.sample(size, seed=1), "val": mc.sample(20_000, seed=2)}

    def config(process: str, steps: int) -> Config:
        return Config(model=ModelConfig(n_layer=2, n_head=4, d_model=64, context=CONTEXT, time_cond=False),
                      process=ProcessConfig(name=process),
                      train=TrainConfig(seed=args.seed, batch_size=64, max_steps=steps, lr=3e-3, min_lr=3e-4, warmup_steps=20,
                                        eval_every=steps, ckpt_every=steps, log_every=50))

    def bits(run_dir: Path) -> tuple[float, float]:
        run = load_run(run_dir)
        r = evaluate_likelihood(run.model, run.process, splits["val"], tokenizer().token_bytes(), context=CONTEXT,
                                mc_samples=4, max_windows=256, seed=0)
        return r.bits_per_token, r.stderr_bits_per_token

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ar = Path(tmp) / "ar"
        train(config("ar", args.ar_steps), ar, splits, tokenizer(), progress=False)
        b, _ = bits(ar)
        rows.append({"steps": args.ar_steps, "model": "AR twin (exact NLL)", "bits_per_token": b, "stderr": 0.0})
        wanted = [v.strip() for v in args.variants.split(";") if v.strip()]
        for n in map(int, args.steps.split(",")):
            variants = {"scratch": {}, "scratch, shift": {"logits_shift": 1}, "converted": {},
                        "converted, annealed over N/2": {"anneal_steps": n // 2},
                        "converted, lr / 3": {"lr": 1e-3}, "converted, no shift": {"shift": "off"}}
            for name, v in variants.items():
                if wanted and name not in wanted:
                    continue
                cfg = config("masked", n)
                cfg.model.logits_shift = v.get("logits_shift", 0)
                if "lr" in v:
                    cfg.train.lr, cfg.train.min_lr = v["lr"], v["lr"] / 10
                if name.startswith("converted"):
                    cfg.train.init = str(ar)
                    cfg.adapt.anneal_steps = v.get("anneal_steps", 0)
                    cfg.adapt.shift = v.get("shift", "auto")
                    cfg = finetune_config(cfg, ar)
                out = Path(tmp) / f"{name}-{n}".replace(" ", "_").replace(",", "").replace("/", "")
                train(cfg, out, splits, tokenizer(), progress=False)
                b, se = bits(out)
                rows.append({"steps": n, "model": name, "bits_per_token": b, "stderr": se})
                print(json.dumps(rows[-1]), file=sys.stderr)
    record = {"date": datetime.date.today().isoformat(), "machine": cpu_model(), "order": args.order,
              "concentration": args.concentration, "ar_steps": args.ar_steps, "seed": args.seed,
              "true_bits": mc.window_entropy_bits(CONTEXT), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    print("| steps | model | held-out bound (bits/token) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['steps']} | {r['model']} | {r['bits_per_token']:.3f} ± {r['stderr']:.3f} |")


if __name__ == "__main__":
    main()
