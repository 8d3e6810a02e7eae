"""What the commands share: argument types, the sampling flags (from the sampler registry),
loading a model by name or directory, the card's settings, and printing results."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..errors import UsageError
from ..limits.budget import DEFAULT_MAX_SECONDS


def int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


POSITIVE, NON_NEGATIVE = int_at_least(1), int_at_least(0)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, got {text!r}")
    return value


def positive_number(high: float = math.inf, hint: str = ""):
    """An argparse type: a finite number in (0, ``high``]; nan, inf, 0 and negative numbers are
    refused while the command line is parsed, naming the flag (``hint``: what is typical)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and 0 < value <= high):
            limit = f" at most {high:g}" if high < math.inf else ""
            raise argparse.ArgumentTypeError(f"must be a positive, finite number{limit}{hint}; got {text!r}")
        return value

    return parse


def _sampler_help() -> str:
    from ..sampling.registry import SAMPLERS

    return "; ".join(f"{s.name} ({'/'.join(s.fits)}): {s.doc}" for s in SAMPLERS.values())


def add_sampling_args(p: argparse.ArgumentParser, card: bool = False) -> None:
    from ..sampling.registry import SAMPLERS, option_help, option_kind, option_names

    default = "the model card's, else 64" if card else "64"
    p.add_argument("--steps", type=POSITIVE, default=64, help=f"denoising steps (network calls at most; default {default})")
    p.add_argument("--sampler", default=None, metavar="NAME",
                   help="default: the run's own (ancestral; ddpm for gaussian; block for block diffusion; ar "
                        "for the AR twin). All: " + _sampler_help())
    card_or = "the model card's, else " if card else ""
    p.add_argument("--temperature", type=float, default=1.0, help=f"softmax temperature; 0 = greedy (default {card_or}1)")
    p.add_argument("--top-k", type=NON_NEGATIVE, default=0, help=f"keep the k most likely tokens (default {card_or}0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help=f"nucleus sampling mass (default {card_or}1 = off)")
    g = p.add_argument_group("sampler options (only for the samplers named; from sampling/registry.py)")
    for name in option_names(cli_only=True):
        kind = option_kind(name)
        g.add_argument("--" + name.replace("_", "-"), type=POSITIVE if kind is int else kind, default=None,
                       metavar=name.upper(), help=option_help(name))
    g.add_argument("--stop-at-eot", action="store_true",
                   help=", ".join(s.name for s in SAMPLERS.values() if s.stops_at_eot)
                   + ": stop once every sample has ended (variable length)")
    g = p.add_argument_group("conditioning")
    g.add_argument("--label", default=None, help="class label to condition on (runs trained with --labels)")
    g.add_argument("--guidance", type=float, default=0.0,
                   help="guidance scale w >= 0. Classifier-free on the label (or, for --sft runs, the prompt): "
                        "logits = l_c + w (l_c - l_u); with --classifier: classifier guidance toward --label. 0 = off")
    g.add_argument("--classifier", metavar="DIR", default=None,
                   help="a classifier of this run's noisy inputs (train-classifier) for classifier guidance")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--max-seconds", type=positive_seconds, default=DEFAULT_MAX_SECONDS, metavar="S",
                   help=f"refuse, after the first step, a request projected to take longer (default "
                        f"{DEFAULT_MAX_SECONDS:g}: an hour)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--threads", type=NON_NEGATIVE, default=0,
                   help="CPU threads for torch (default 0 = auto: the cores not already busy, from the load average)")


def sampler_options(args) -> dict:
    """The sampler options given on the command line (unset ones stay None). Stopping at
    end-of-text is not among them: each command decides it (--stop-at-eot; chat always)."""
    from ..sampling.registry import BASE, option_names

    return {name: getattr(args, name) for name in (*BASE, *option_names(cli_only=True))}


def generate_texts(run, args, prompt: str, num: int, length: int | None, on_step=None):
    from ..control.continuation import continue_prompt

    return continue_prompt(run, prompt, length=length, steps=args.steps, sampler=args.sampler, num=num,
                           seed=args.seed, on_step=on_step, label=args.label, guidance=args.guidance,
                           classifier=classifier_of(args), stop_at_eot=args.stop_at_eot, **sampler_options(args))


def classifier_of(args):
    if not getattr(args, "classifier", None):
        return None
    from ..runtime import resolve_device
    from ..training.classifier import load_classifier

    return load_classifier(args.classifier, resolve_device(args.device))


def load(run_dir: str | None, device: str, threads: int = 0):
    """A run directory, a saved pipeline, or a shipped model name (None: the default model), with
    ``threads`` CPU threads for torch (0: the cores not already busy; runtime.auto_threads)."""
    from ..runs import resolve

    folder = resolve(run_dir)  # an unknown name fails here, before torch loads
    if not Path(folder).exists():
        from ..errors import CheckpointError

        raise CheckpointError(f"run directory not found: {folder}")
    from ..runs import load_run
    from ..runtime import resolve_device, set_threads

    set_threads(threads)
    return load_run(folder, resolve_device(device))


def unescape(text: str, raw: bool) -> str:
    """\\n and \\t typed in a shell argument become newline and tab (unless --raw)."""
    return text if raw else text.replace("\\n", "\n").replace("\\t", "\t")


def with_card(args, name_or_dir, task: str = "generate"):
    """The model's folder; the sampling options left unset in ``args`` are filled from its card
    (its ``task`` settings: "generate", or "infill" for holes)."""
    from ..runs import resolve
    from ..sampling.cards import fill_settings, generation_defaults

    folder = resolve(name_or_dir)
    given = {**sampler_options(args), "steps": args.steps, "sampler": args.sampler}
    for name, value in fill_settings(given, generation_defaults(folder, task)).items():  # the card's, unless given
        setattr(args, name, value)
    if getattr(args, "num", 1) > 1 and args.temperature == 0:
        source = "the model card's" if given["temperature"] is None else "--temperature 0"
        print(f"textdiffusion: note: temperature 0 ({source}) is greedy, so all {args.num} results are the same; "
              f"pass --temperature 1 for varied ones", file=sys.stderr)
    return folder


def setting(item: str, flag: str = "--default") -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f"{flag} takes KEY=VALUE, e.g. steps=32; got {item!r}")
    for kind in (int, float):
        try:
            return key.strip(), kind(value)
        except ValueError:
            pass
    return key.strip(), value.strip()


def add_checkpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="which weights of a training run: last (default: the latest checkpoint) or best (the "
                        "lowest validation loss, RUN/best; the same as giving RUN/best)")


def checkpoint_folder(run: str | None, which: str) -> str | None:
    """``run`` itself (``which`` = last), or its best checkpoint's folder (RUN/best)."""
    if which == "last":
        return run
    from ..runs import resolve
    from ..runs.checkpoint import best_dir

    return str(best_dir(resolve(run)))


def add_trace_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace-out", metavar="FILE.json", default=None,
                   help="write every step of every sample as JSON (format textdiffusion.trace/1; docs/trace-format.md)")


def trace_recorder(args, run, watch=None):
    """The per-step recorder --trace-out asks for, or --watch draws from (``watch``: a frame
    consumer; only the first row is recorded when nothing is saved); None without either."""
    saving = bool(getattr(args, "trace_out", None))
    if not saving and watch is None:
        return None
    from ..sampling.trace import TraceRecorder

    return TraceRecorder(run.process.mask_id, rows=None if saving else 1, on_frame=watch)


def save_trace(args, recorder, run, texts: list[str], sampler: str, prompt_length: int) -> None:
    if getattr(args, "trace_out", None):
        path = recorder.save(args.trace_out, texts=texts, sampler=sampler, process=run.process.name,
                             prompt_length=prompt_length, model=str(run.run_dir), steps=args.steps, seed=args.seed)
        print(f"trace of {len(recorder.frames)} steps written to {path}", file=sys.stderr)


def read_text(inline: str | None, file: str | None, what: str) -> str:
    """The text given inline, in ``file`` or ('-') on standard input; a file or input that is not
    UTF-8 is a one-line error naming it (whatever the locale: read as bytes, then decoded)."""
    from ..fileio import read_utf8, utf8_text

    if file:
        return read_utf8(file, UsageError)
    if inline == "-":
        if hasattr(sys.stdin, "buffer"):
            return utf8_text(sys.stdin.buffer.read(), "standard input", UsageError)
        return sys.stdin.read()
    if inline is None:
        raise UsageError(f"give the {what} (or --file)")
    return inline


def print_control(result, args, extra: dict) -> None:
    if args.json:
        print(json.dumps({**result.to_dict(), "steps": args.steps, "seed": args.seed, **extra}))
        return
    for i, text in enumerate(result.texts):
        if i:
            print("\n" + "─" * 40)
        print(text)
    print(f"[{result.sampler}: {result.nfe} network calls, {result.seconds:.2f} s]", file=sys.stderr)
