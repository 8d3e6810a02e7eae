"""Make a distillation corpus for a speculative drafter: the AR target's own continuations.

    python bench/distill_drafter.py --target RUN_AR --data TEXT --out FILE [--rows 2048] [--temperature 0]

A drafter is only as useful as its agreement with the target, and a diffusion model trained on
the corpus learns the corpus, not the target's habits (DistillSpec, Zhou et al. 2023: train the
drafter on the target's outputs). This takes ``--rows`` random windows of ``--prompt`` tokens from
TEXT (the target's own tokenizer), lets the AR target continue each by ``--length`` tokens
(``--temperature`` 0: greedy, the decoding the drafter will serve; batched, KV-cached), and writes
prompt + continuation, one row per paragraph, to FILE. Fine-tune the drafter on it:

    textdiffusion train --init DRAFTER_RUN --data FILE --out DISTILLED --set train.max_steps=400
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="the AR run")
    p.add_argument("--data", required=True, help="a text file the prompts are cut from")
    p.add_argument("--out", required=True, help="the text file to write")
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--prompt", type=int, default=32, help="prompt tokens per row")
    p.add_argument("--length", type=int, default=128, help="tokens the target adds per row")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from tqdm import tqdm

    from textdiffusion.runs import load_run
    from textdiffusion.sampling import build_sampler

    run = load_run(args.target)
    if run.process.name != "ar":
        sys.exit(f"{args.target} is a {run.process.name!r} model: the target must be an AR run")
    tok = run.tokenizer
    ids = torch.from_numpy(tok.encode(Path(args.data).read_text(encoding="utf-8")).astype("int64"))
    gen = torch.Generator().manual_seed(args.seed)
    starts = torch.randint(0, len(ids) - args.prompt, (args.rows,), generator=gen)
    sampler = build_sampler("ar", run.process, tok, temperature=args.temperature)
    texts, t0 = [], time.perf_counter()
    for lo in tqdm(range(0, args.rows, args.batch), desc="target continuations", unit="batch"):
        prompt = torch.stack([ids[s : s + args.prompt] for s in starts[lo : lo + args.batch].tolist()])
        out = sampler.generate(run.model, run.process, length=args.length, prompt=prompt, batch_size=len(prompt),
                               gen=torch.Generator().manual_seed(args.seed + lo))
        texts += [tok.decode(row.tolist()) for row in out.tokens]
    Path(args.out).write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    print(f"wrote {len(texts)} rows ({sum(map(len, texts))} characters) to {args.out} in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
