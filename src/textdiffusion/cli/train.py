"""textdiffusion train: train a diffusion model (or its AR twin) on your text."""

from __future__ import annotations

import argparse
import sys

from ..config import CONVERTS
from ..errors import UsageError
from ..processes.registry import NAMES, help_text

NAME = "train"
PARSER = dict(help="train a diffusion model (or its AR twin) on your text",
              description="Train a model into a run directory (config, tokenizer, metrics, checkpoint).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="a text file, a folder of text files, a JSONL file with a 'text' field, a "
                                  "parquet or Arrow file, a directory saved by datasets' save_to_disk (its "
                                  "train/validation/test splits are kept), or 'stdlib' (this Python's "
                                  "standard library sources)")
    p.add_argument("--text-field", metavar="NAME", help="the JSONL field or table column with the text "
                                                        "(default text; data.text_field)")
    p.add_argument("--out", required=True, help="run directory to create (or to continue with --resume)")
    p.add_argument("--process", choices=NAMES, metavar="NAME",
                   help="default masked. " + help_text())
    p.add_argument("--config", help="TOML config file (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set train.max_steps=500 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--sft", action="store_true",
                   help="instruction tuning: --data is JSONL of {\"prompt\", \"response\"}; the prompt (in a "
                        "chat template) is never noised and the loss is on the response only")
    p.add_argument("--labels", action="store_true",
                   help="class-conditional: --data is JSONL of {\"text\", \"label\"}; the label is dropped with "
                        "probability train.cond_drop (default 0.1) for classifier-free guidance")
    p.add_argument("--init", metavar="RUN|HF_DIR", help="start from this run's weights, tokenizer, model and process "
                                                 "(fine-tuning: a run directory or a shipped model's name, e.g. "
                                                 "--init english --data my.txt; ./english for a folder of that name). "
                                                 "With an AR run and --process masked or block: convert it into a "
                                                 "diffusion model (--set adapt.anneal_steps=N, adapt.shift). Also a local "
                                                 "transformers GPT-2/LLaMA/Mistral/Qwen2 folder (windows of model.context, "
                                                 "default 256)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args) -> int:
    from ..training import distributed

    try:
        return _main(args)
    finally:
        distributed.leave()  # torchrun: leave the process group (nothing in one process)


def _main(args) -> int:
    from ..config import load_config
    from ..training.recipe import resume_run, train_run

    if args.resume:
        if args.data or args.text_field or args.process or args.config or args.sft or args.labels or args.init:
            raise UsageError("--resume continues the saved config: drop --data/--text-field/--process/--config/--sft/--init "
                             "(use --set train.*)")
        result = resume_run(args.out, args.overrides, progress=not args.quiet)
    else:
        overrides = list(args.overrides)
        if args.data:
            overrides.append(f"data.path={args.data}")
        if args.text_field:
            overrides.append(f"data.text_field={args.text_field}")
        if args.process and not args.init:
            overrides.append(f"process.name={args.process}")
        if args.sft:
            overrides.append("data.sft=true")
        if args.labels:
            overrides.append("data.labels=true")
        if args.init:  # a run directory or a shipped model's name (fine-tune the shipped model)
            from ..runs import resolve
            from ..training.adapt import read_init

            init = resolve(args.init)
            init_cfg, _ = read_init(init)  # its process, so that the config is checked against it
            process = init_cfg.process.name
            if args.process and args.process != process:
                if process != "ar" or args.process not in CONVERTS:
                    raise UsageError(f"--init takes the model and process of that run ({process}): drop --process "
                                     f"(--process {' or '.join(CONVERTS)} converts an AR run into a diffusion model)")
                process = args.process  # AR -> diffusion conversion: the AR weights, a diffusion objective
            overrides[:0] = [f"process.name={process}", f"model.time_cond={str(init_cfg.model.time_cond).lower()}"]
            overrides.append(f"train.init={init}")
        cfg = load_config(args.config, overrides)
        result = train_run(cfg, args.out, progress=not args.quiet)
    val = f", val {result.val_loss:.4f} nats/token" if result.val_loss is not None else ""
    if not distributed_main():
        return 0
    best = ""
    if result.best_val_loss is not None:
        best = f" (best {result.best_val_loss:.4f} at step {result.best_step}{', stopped early' if result.stopped_early else ''})"
    if result.train_loss != result.train_loss:  # NaN: no step was taken (a resumed run already at its end)
        print(f"nothing to train: the run is at step {result.step}{best}; run saved in {args.out}", file=sys.stderr)
    else:
        print(f"trained to step {result.step}: loss {result.train_loss:.4f}{val}{best}, "
              f"{result.tokens_per_second:,.0f} tokens/s; run saved in {args.out}", file=sys.stderr)
    _draw_curves(args.out)
    return 0


def _draw_curves(run_dir) -> None:
    """RUN/curves.png, the run's validation curve (a note instead when matplotlib is missing);
    nothing for a run with fewer than two validations (no curve to draw)."""
    from pathlib import Path

    from ..viz.curves import read_curves, write_curves

    try:
        if len(read_curves(run_dir).val) < 2:
            return
        path = write_curves([run_dir], Path(run_dir) / "curves.png", title=Path(run_dir).name)
    except UsageError as exc:  # matplotlib missing, or nothing logged yet
        print(f"textdiffusion: no curves.png ({exc})", file=sys.stderr)
        return
    print(f"validation curve: {path}", file=sys.stderr)


def distributed_main() -> bool:
    from ..training import distributed

    return distributed.current().main
