"""textdiffusion viz: watch text emerge from noise, as files: an HTML player, a GIF, a PNG strip
and a plot, from a saved trace or a generation it runs; and --forward, the forward corruption of
a text under the three noise processes."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from ..errors import UsageError, first_line
from .common import (
    POSITIVE,
    add_sampling_args,
    classifier_of,
    load,
    sampler_options,
    unescape,
    with_card,
)

NAME = "viz"
FORMATS = ("html", "gif", "strip", "plot")
PARSER = dict(help="pictures of a generation: an HTML player, a GIF, a PNG strip and plot (needs the viz extra)",
              description="Generate from MODEL (default: the English model) and write what every step did: "
                          "player.html (self-contained: opens from disk, no network), denoise.gif, strip.png and "
                          "decided.png (the fraction decided and the confidence per network call). --ar RUN adds "
                          "an autoregressive run on the same prompt, on the same axis of network calls. --trace FILE "
                          "draws a trace saved by generate --trace-out instead. --forward TEXT draws the forward "
                          "corruption of TEXT under masking, random replacement and Gaussian noise.",
              epilog="examples:\n  textdiffusion viz english \"ROMEO:\" --steps 32 --out viz\n"
                     "  textdiffusion viz runs/masked \"def \" --ar runs/ar --sampler confidence\n"
                     "  textdiffusion viz --trace t.json --model english\n"
                     "  textdiffusion viz english --forward \"To be, or not to be, that is the question\"\n"
                     "  textdiffusion viz --curves runs/masked runs/ar --out curves",
              formatter_class=argparse.RawDescriptionHelpFormatter)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, metavar="NAME|DIR",
                   help="a shipped model name or a run directory (default: the English model)")
    p.add_argument("prompt", nargs="?", default="", help="text the output starts with; [MASK:n] holes are filled")
    p.add_argument("--model", dest="model_flag", default=None, metavar="NAME|DIR",
                   help="the model (the same as MODEL; with --trace, the one whose tokenizer decodes it)")
    p.add_argument("--trace", metavar="FILE.json", default=None, help="draw this saved trace instead of generating")
    p.add_argument("--forward", metavar="TEXT", default=None,
                   help="draw the forward corruption of TEXT at t = 0 ... 1 for the three processes")
    p.add_argument("--curves", nargs="+", metavar="RUN", default=None,
                   help="draw these training runs' validation curves (bits/token against epochs, best marked) "
                        "into OUT/curves.png, e.g. a diffusion run and its AR twin")
    p.add_argument("--ar", metavar="RUN", default=None,
                   help="an autoregressive run (the AR twin) decoding the same prompt, shown beside it")
    p.add_argument("--out", default="viz", help="folder for the files (default ./viz)")
    p.add_argument("--formats", default=",".join(FORMATS),
                   help=f"which files, comma-separated (default {','.join(FORMATS)})")
    p.add_argument("--length", type=POSITIVE, default=None, help="new tokens (default: up to 64, within the context)")
    p.add_argument("--title", default=None, help="the title shown in the pictures")
    p.add_argument("--raw", action="store_true", help="do not turn \\n and \\t in PROMPT into newline and tab")
    add_sampling_args(p, card=True)
    p.set_defaults(steps=None, temperature=None, top_k=None, top_p=None)


def _formats(text: str) -> list[str]:
    chosen = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in chosen if f not in FORMATS]
    if bad or not chosen:
        raise UsageError(f"--formats takes {', '.join(FORMATS)}; got {text!r}")
    return chosen


def main(args) -> int:
    if args.model and args.model_flag and args.model != args.model_flag:
        raise UsageError("give the model once: as MODEL or as --model")
    model = args.model_flag or args.model
    formats = _formats(args.formats)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a folder")
    if args.curves:
        if model or args.trace or args.forward:
            raise UsageError("--curves draws training runs: give no MODEL, --trace or --forward with it")
        from ..viz.curves import write_curves

        print(write_curves(args.curves, out / "curves.png", title=args.title))
        return 0
    trace = _read_trace(args.trace) if args.trace is not None and args.forward is None else None
    created = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)  # the topmost folder made
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _draw(args, model, formats, out, trace)
    except BaseException:
        if created is not None:  # a failure (or Ctrl-C) leaves no folder behind
            shutil.rmtree(created, ignore_errors=True)
        raise


def _read_trace(path: str) -> dict:
    """A trace file (generate --trace-out), read and checked before the output folder is made;
    anything wrong is one line naming the file."""
    from ..viz.story import check_trace

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read the trace {path}: {exc.strerror}") from None
    except ValueError as exc:  # not UTF-8, or not JSON
        raise UsageError(f"the trace {path} is not JSON ({first_line(exc)}): write one with generate --trace-out "
                         f"FILE") from None
    try:
        return check_trace(data)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None


def _draw(args, model, formats: list[str], out: Path, trace: dict | None) -> int:
    from ..viz.story import story

    written: list[Path] = []
    if args.forward is not None:
        from ..viz.forward import TIMES, corruptions
        from ..viz.images import write_forward

        run = load(model, args.device, args.threads)
        text = unescape(args.forward, args.raw)
        if not text:
            raise UsageError("--forward needs a text")
        columns = corruptions(run, text, seed=args.seed)
        written.append(write_forward(columns, TIMES, out / "forward.png",
                                     title=args.title or f"the forward process on {len(columns['masking'])} tokens"))
        _report(written)
        return 0
    if trace is not None:
        run = load(model or trace.get("model"), args.device, args.threads)
        main_story = story(trace, run.tokenizer, title=args.title or f"{trace.get('process')} / {trace.get('sampler')}")
    else:
        prompt = unescape(args.prompt, args.raw)
        from ..control.templates import has_holes

        holes = has_holes(prompt)
        folder = with_card(args, model, "infill" if holes else "generate")
        run = load(str(folder), args.device, args.threads)
        trace = _generate(run, args, prompt, holes)
        main_story = story(trace, run.tokenizer, title=args.title or f"{run.process.name} diffusion, {trace['sampler']}")
    ar_story = None
    if args.ar is not None:
        ar_run = load(args.ar, args.device, args.threads)
        if not ar_run.process.left_to_right:
            raise UsageError(f"--ar {args.ar} is a {ar_run.process.name} run: give an autoregressive one (--process ar)")
        if ar_run.tokenizer.vocab_size != run.tokenizer.vocab_size:
            print("textdiffusion: note: the AR run has another tokenizer; its pane counts its own tokens", file=sys.stderr)
        prompt_text = run.tokenizer.decode(trace["frames"][-1]["rows"][0]["tokens"][: trace["prompt_length"]])
        shared = {k: getattr(args, k) for k in ("temperature", "top_k", "top_p") if getattr(args, k, None) is not None}
        ar_story = story(_ar_trace(ar_run, prompt_text, main_story.length - trace["prompt_length"], args.seed, shared),
                         ar_run.tokenizer, title="AR twin")
    from ..viz.images import write_gif, write_plot, write_strip
    from ..viz.player import player_html

    if "html" in formats:
        path = out / "player.html"
        path.write_text(player_html(main_story, ar_story), encoding="utf-8")
        written.append(path)
    if "gif" in formats:
        written.append(write_gif(main_story, out / "denoise.gif"))
    if "strip" in formats:
        written.append(write_strip(main_story, out / "strip.png"))
    if "plot" in formats:
        written.append(write_plot(main_story, out / "decided.png", ar_story))
    (out / "trace.json").write_text(json.dumps(trace) + "\n", encoding="utf-8")
    written.append(out / "trace.json")
    print(main_story.text)
    _report(written)
    return 0


def _generate(run, args, prompt: str, holes: bool) -> dict:
    from ..pipeline import Pipeline

    pipe = Pipeline(run)
    options = {k: v for k, v in sampler_options(args).items() if v is not None}
    common = dict(steps=args.steps, sampler=args.sampler, seed=args.seed, trace=True, label=args.label,
                  guidance=args.guidance, classifier=classifier_of(args), **options)
    if holes:
        if args.length:
            raise UsageError("--length does not apply to a prompt with holes (size them with [MASK:n])")
        result = pipe.infill(prompt, **common)
    else:
        length = args.length or max(1, min(64, run.cfg.model.context - len(run.tokenizer.encode_exact(prompt, "the prompt"))))
        result = pipe.generate(prompt, length=length, stop_at_eot=args.stop_at_eot, **common)
    return result.trace.data


def _ar_trace(run, prompt: str, length: int, seed: int, options: dict) -> dict:
    """The AR run decoding ``prompt`` for ``length`` tokens with the same temperature, top-k, top-p."""
    from ..pipeline import Pipeline

    length = max(1, min(length, run.cfg.model.context - len(run.tokenizer.encode_exact(prompt, "the prompt"))))
    return Pipeline(run).generate(prompt, length=length, seed=seed, trace=True, **options).trace.data


def _report(paths: list[Path]) -> None:
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
