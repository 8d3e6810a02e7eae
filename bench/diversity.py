"""Benchmark: the knobs that trade diversity for quality, on the Tiny Shakespeare masked model.

    python bench/diversity.py          # needs bench/out/shakespeare-{masked,ar} (bench/shakespeare.py)

For each sampler and temperature: 16 samples of 128 characters at 64 steps through ``textdiffusion
eval`` (its likelihood part cut to one window), reporting judge perplexity under the AR twin,
unigram entropy, distinct-1/2/3 and self-BLEU. Writes ``bench/out/diversity.json`` and prints
the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, cpu_model, run_measured  # noqa: E402

GRID = [("ancestral", t) for t in (1.0, 0.85, 0.7)] + [("confidence", t) for t in (1.0, 0.85)] + \
       [("semi-ar", 1.0), ("remdm", 1.0)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "bench" / "out"))
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "tinyshakespeare.txt"))
    p.add_argument("--steps", type=int, default=64)
    args = p.parse_args()
    out = Path(args.out)
    rows = []
    for sampler, temperature in GRID:
        cmd = ["eval", out / "shakespeare-masked", "--data", args.data, "--judge", out / "shakespeare-ar", "--json",
               "--max-windows", 1, "--mc-samples", 1, "--num-samples", 16, "--steps", args.steps,
               "--sampler", sampler, "--temperature", temperature, "--seed", 0]
        res = json.loads(run_measured(cmd)[0])
        row = {"sampler": sampler, "temperature": temperature, **{k: res[k] for k in (
            "judge_perplexity", "unigram_entropy", "distinct_1", "distinct_2", "distinct_3", "self_bleu",
            "tokens_per_second")}}
        rows.append(row)
        print(row, file=sys.stderr)
    results = {"date": datetime.date.today().isoformat(), "cpu_model": cpu_model(),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores", "steps": args.steps, "rows": rows}
    (out / "diversity.json").write_text(json.dumps(results, indent=2))
    lines = ["| sampler | temperature | judge ppl | entropy | distinct-1 | distinct-2 | distinct-3 | self-BLEU |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['temperature']:g} | {r['judge_perplexity']:.2f} | {r['unigram_entropy']:.3f} | "
                     f"{r['distinct_1']:.3f} | {r['distinct_2']:.3f} | {r['distinct_3']:.3f} | {r['self_bleu']:.3f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
