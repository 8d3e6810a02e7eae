"""The ``textdiffusion`` command: one registry of subcommands, each a thin call into the library.

Bad input never shows a traceback: known errors print one line and exit with status 2
(set TEXTDIFFUSION_DEBUG=1 to see the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import UsageError

EXAMPLES = """examples:
  textdiffusion train --data stdlib --out runs/q --config configs/quickstart.toml
  textdiffusion train --data input.txt --out runs/ar --process ar --set train.max_steps=500
  textdiffusion sample runs/q --prompt "def " --num 4 --steps 64 --sampler confidence
  textdiffusion eval runs/q --data stdlib --judge runs/ar --json
  textdiffusion infill runs/q "def add(a, b):\n    return [MASK:6]\n"
  textdiffusion edit runs/q --text "x = [EDIT]compute(y)[/EDIT] + 1" --strength 0.7
"""


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


POSITIVE, NON_NEGATIVE = _int_at_least(1), _int_at_least(0)


def _sampler_help() -> str:
    from .sampling.registry import SAMPLERS

    return "; ".join(f"{s.name} ({'/'.join(s.fits)}): {s.doc}" for s in SAMPLERS.values())


def _add_sampling_args(p: argparse.ArgumentParser, card: bool = False) -> None:
    from .sampling.registry import SAMPLERS, option_help, option_kind, option_names

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
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")


def sampler_options(args) -> dict:
    """The sampler options given on the command line (unset ones stay None). Stopping at
    end-of-text is not among them: each command decides it (--stop-at-eot; chat always)."""
    from .sampling.registry import BASE, option_names

    return {name: getattr(args, name) for name in (*BASE, *option_names(cli_only=True))}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textdiffusion",
        description="Train, sample and evaluate text diffusion language models, beside an "
                    "autoregressive twin on the same backbone.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"textdiffusion {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of any error (also: TEXTDIFFUSION_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("generate", help="generate text (default: the shipped English model)",
                       description="Generate text from a shipped model (textdiffusion models lists them) or any run "
                                   "directory; --watch shows the denoising live. Sampling options left unset come from the "
                                   "model's card (textdiffusion models --json shows them), else the usual defaults.")
    p.add_argument("prompt", nargs="?", default="",
                   help="text the output starts with (kept verbatim); [MASK], [MASK:n] or [MASK:a-b] holes "
                        "anywhere are filled instead (see infill); \\n and \\t are newline and tab")
    p.add_argument("--model", default=None, metavar="NAME|DIR", help="a shipped model name (english, code) or a "
                                                                     "run directory (default: the English model)")
    p.add_argument("--raw", action="store_true", help="do not turn \\n and \\t in PROMPT into newline and tab")
    p.add_argument("--length", type=POSITIVE, default=None, help="new tokens (default: up to 128, within the context)")
    p.add_argument("--num", type=POSITIVE, default=1, help="samples, generated as one batch (default 1)")
    p.add_argument("--watch", action="store_true", help="show every denoising step of the first sample in the terminal")
    _add_sampling_args(p, card=True)
    p.add_argument("--json", action="store_true", help="print one JSON object (texts, nfe, seconds, ...)")
    # unset sampling options come from the model's card (textdiffusion models), else the usual defaults
    p.set_defaults(func=cmd_generate, steps=None, temperature=None, top_k=None, top_p=None)

    p = sub.add_parser("export", help="save a run for inference only (bf16 weights, config, tokenizer)",
                       description="Write what inference needs (config, tokenizer, labels, the EMA weights in "
                                   "--dtype) into a new directory that every command and Pipeline.from_pretrained "
                                   "read; with --description / --default it also gets a card.json (what the shipped "
                                   "models carry).",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  textdiffusion export runs/mine --out my-model --description 'my notes' "
                              "--default sampler=confidence --default steps=32")
    p.add_argument("run", help="run directory (or a saved model)")
    p.add_argument("--out", required=True, help="directory to create (must not exist or be empty)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                   help="weight precision (default bfloat16: half the size of float32)")
    p.add_argument("--description", help="one line about the model, shown by textdiffusion models")
    p.add_argument("--default", action="append", default=[], metavar="KEY=VALUE",
                   help="a sampling setting generate uses when not given (sampler, steps, temperature, top_k, top_p, "
                        "threshold, ...); repeatable")
    p.add_argument("--infill-default", action="append", default=[], metavar="KEY=VALUE",
                   help="a sampling setting for filling holes (generate with [MASK] holes, infill) when not given; "
                        "without any, holes use the --default settings; repeatable")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("models", help="list the shipped models")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train", help="train a diffusion model (or its AR twin) on your text",
                       description="Train a model into a run directory (config, tokenizer, metrics, checkpoint).")
    p.add_argument("--data", help="a text file, a folder of text files, a JSONL file with a 'text' field, "
                                  "or 'stdlib' (this Python's standard library sources)")
    p.add_argument("--out", required=True, help="run directory to create (or to continue with --resume)")
    p.add_argument("--process", choices=("masked", "uniform", "gaussian", "sedd-absorb", "sedd-uniform", "block", "ar"),
                   help="masked diffusion (default), uniform (random-token replacement) diffusion, gaussian "
                        "(noise on learned embeddings), score-entropy diffusion (SEDD) with absorbing or "
                        "uniform transitions, block diffusion (BD3-LM; --set process.block_size=N), or the AR twin")
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
    p.add_argument("--init", metavar="RUN", help="start from this run's weights, tokenizer, model and process "
                                                 "(fine-tuning: a run directory or a shipped model's name, e.g. "
                                                 "--init english --data my.txt; ./english for a folder of that name)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate text from a trained run",
                       description="Generate text from a run directory. Diffusion runs start from their "
                                   "prior (all-mask, or random tokens) and denoise; AR runs decode left to "
                                   "right with a KV cache.")
    p.add_argument("run", help="run directory or shipped model name (textdiffusion models)")
    p.add_argument("--prompt", default="", help="text the samples start with (kept verbatim)")
    p.add_argument("--num", type=POSITIVE, default=1, help="number of samples, generated as one batch (default 1)")
    p.add_argument("--length", type=POSITIVE, default=None, help="new tokens per sample (default: fill the context, at most 128)")
    _add_sampling_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (samples, nfe, tokens_per_second, ...)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="held-out likelihood bound, sample quality and speed",
                       description="Evaluate a run: ELBO (diffusion) or exact NLL (AR) in bits/token and "
                                   "bits/byte, then sample quality (judge perplexity, entropy) and speed.")
    p.add_argument("run", help="run directory or shipped model name (textdiffusion models)")
    p.add_argument("--data", required=True, help="text to score: the training source (its --split is used) or any other file/folder/JSONL")
    p.add_argument("--split", choices=("train", "val", "test", "all"), default=None,
                   help="which split to score (default: val for the run's own data, all otherwise)")
    p.add_argument("--judge", help="an AR run directory whose perplexity of the samples is reported")
    p.add_argument("--discrete-steps", type=NON_NEGATIVE, default=None, metavar="T",
                   help="report the discrete-time bound with T steps (0 = continuous; default: the run's own)")
    p.add_argument("--mc-samples", type=POSITIVE, default=4, help="Monte Carlo draws of t per window (default 4)")
    p.add_argument("--max-windows", type=NON_NEGATIVE, default=256, help="cap on scored windows; 0 = all (default 256)")
    p.add_argument("--batch-size", type=POSITIVE, default=16, help="windows per forward pass (default 16)")
    p.add_argument("--num-samples", type=NON_NEGATIVE, default=8, help="samples for quality and speed (default 8; 0 = skip)")
    p.add_argument("--length", type=POSITIVE, default=None, help="tokens per sample (default: the context)")
    _add_sampling_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("infill", help="fill [MASK] holes anywhere in a text",
                       description="Fill the holes of a template; its fixed text is kept verbatim. Holes: "
                                   "[MASK] (one token), [MASK:n] (n tokens), [MASK:a-b] (a to b tokens: filled "
                                   "at a few lengths, the most likely text under the model is kept). In the "
                                   "TEMPLATE argument \\n and \\t are newline and tab (use --raw to keep them).",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog='example:\n  textdiffusion infill runs/code "def add(a, b):\\n    [MASK:12]\\n"')
    p.add_argument("run", help="run directory or shipped model name (textdiffusion models)")
    p.add_argument("template", nargs="?", help="text with holes ('-' reads standard input)")
    p.add_argument("--file", help="read the template from this file instead")
    p.add_argument("--raw", action="store_true", help="do not turn \\n and \\t in TEMPLATE into newline and tab")
    p.add_argument("--num", type=POSITIVE, default=1, help="fillings to draw, as one batch (default 1)")
    p.add_argument("--candidates", type=POSITIVE, default=4,
                   help="lengths tried for each variable-length hole [MASK:a-b] (default 4)")
    _add_sampling_args(p, card=True)
    p.add_argument("--json", action="store_true", help="print one JSON object (texts, fills, nfe, ...)")
    p.set_defaults(func=cmd_infill, steps=None, temperature=None, top_k=None, top_p=None)  # unset: the model card's

    p = sub.add_parser("edit", help="rewrite a span of a text, keeping the rest",
                       description="Re-noise a span to --strength (0 < s <= 1; 1 regenerates it) and denoise it "
                                   "with the text around it fixed. Give the span as --span A:B (character "
                                   "offsets) or mark it in the text as [EDIT]...[/EDIT]. The span keeps its "
                                   "length in tokens; text outside it is returned verbatim.")
    p.add_argument("run", help="run directory or shipped model name (textdiffusion models)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to edit")
    src.add_argument("--file", help="read the text from this file")
    p.add_argument("--span", help="A:B, the characters text[A:B] to rewrite (default: the [EDIT] marks)")
    p.add_argument("--strength", type=float, default=0.5, help="noise level of the span, in (0, 1] (default 0.5)")
    p.add_argument("--num", type=POSITIVE, default=1, help="edits to draw, as one batch (default 1)")
    _add_sampling_args(p, card=True)
    p.add_argument("--json", action="store_true", help="print one JSON object (texts, spans, nfe, ...)")
    p.set_defaults(func=cmd_edit, steps=None, temperature=None, top_k=None, top_p=None)  # unset: the model card's

    p = sub.add_parser("train-classifier", help="train a classifier of a run's noisy inputs (classifier guidance)",
                       description="Train a classifier p(label | x_t) on the noisy inputs of a diffusion run (masked, "
                                   "uniform, SEDD or Gaussian), from JSONL of {\"text\", \"label\"}; then steer the "
                                   "run with sample/infill/edit --classifier DIR --label NAME --guidance W.")
    p.add_argument("run", help="the diffusion run the classifier will guide")
    p.add_argument("--data", required=True, help="JSONL file of {\"text\", \"label\"} records")
    p.add_argument("--out", required=True, help="classifier directory to create")
    p.add_argument("--steps", type=POSITIVE, default=300, help="optimisation steps (default 300)")
    p.add_argument("--batch-size", type=POSITIVE, default=32, help="documents per step (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--layers", type=POSITIVE, default=None, help="transformer layers (default: the run's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_classifier)

    p = sub.add_parser("chat", help="talk to an instruction-tuned run (train --sft)",
                       description="Reply to MESSAGE, or (without one) talk turn by turn on standard input "
                                   "(an empty line or end of input ends). The conversation is wrapped in the "
                                   "chat template the run was tuned with; replies end at end-of-text.")
    p.add_argument("run", help="run directory (trained with --sft) or shipped model name")
    p.add_argument("message", nargs="?", help="one message to answer (default: interactive)")
    p.add_argument("--length", type=POSITIVE, default=None, help="reply tokens at most (default: the rest of the context)")
    p.add_argument("--num", type=POSITIVE, default=1, help="replies to draw for a one-shot MESSAGE (default 1)")
    _add_sampling_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (replies, nfe, ...); interactive: one "
                                                          "JSON line per turn")
    p.set_defaults(func=cmd_chat)
    return parser


# -- commands ----------------------------------------------------------------------------------


def cmd_train(args) -> int:
    from .config import load_config
    from .training.recipe import resume_run, train_run

    if args.resume:
        if args.data or args.process or args.config or args.sft or args.labels or args.init:
            raise UsageError("--resume continues the saved config: drop --data/--process/--config/--sft/--init "
                             "(use --set train.*)")
        result = resume_run(args.out, args.overrides, progress=not args.quiet)
    else:
        overrides = list(args.overrides)
        if args.data:
            overrides.append(f"data.path={args.data}")
        if args.process:
            if args.init:
                raise UsageError("--init takes the model and process of that run: drop --process")
            overrides.append(f"process.name={args.process}")
        if args.sft:
            overrides.append("data.sft=true")
        if args.labels:
            overrides.append("data.labels=true")
        if args.init:  # a run directory or a shipped model's name (fine-tune the shipped model)
            from .pretrained import resolve
            from .training.checkpoint import read_run

            init = resolve(args.init)
            init_cfg, _ = read_run(init)  # its process, so that the config is checked against it
            overrides[:0] = [f"process.name={init_cfg.process.name}",
                             f"model.time_cond={str(init_cfg.model.time_cond).lower()}"]
            overrides.append(f"train.init={init}")
        cfg = load_config(args.config, overrides)
        result = train_run(cfg, args.out, progress=not args.quiet)
    val = f", val {result.val_loss:.4f} nats/token" if result.val_loss is not None else ""
    print(f"trained to step {result.step}: loss {result.train_loss:.4f}{val}, "
          f"{result.tokens_per_second:,.0f} tokens/s; run saved in {args.out}", file=sys.stderr)
    return 0


def _generate(run, args, prompt: str, num: int, length: int | None, on_step=None):
    from .pipeline import continue_prompt

    return continue_prompt(run, prompt, length=length, steps=args.steps, sampler=args.sampler, num=num,
                           seed=args.seed, on_step=on_step, label=args.label, guidance=args.guidance,
                           classifier=_classifier(args), stop_at_eot=args.stop_at_eot, **sampler_options(args))


def _classifier(args):
    if not getattr(args, "classifier", None):
        return None
    from .training.classifier import load_classifier
    from .training.trainer import resolve_device

    return load_classifier(args.classifier, resolve_device(args.device))


def _load(run_dir: str | None, device: str):
    """A run directory, a saved pipeline, or a shipped model name (None: the default model)."""
    from .pretrained import resolve

    folder = resolve(run_dir)  # an unknown name fails here, before torch loads
    if not Path(folder).exists():
        from .errors import CheckpointError

        raise CheckpointError(f"run directory not found: {folder}")
    from .training.checkpoint import load_run
    from .training.trainer import resolve_device

    return load_run(folder, resolve_device(device))


def _unescape(text: str, raw: bool) -> str:
    """\\n and \\t typed in a shell argument become newline and tab (unless --raw)."""
    return text if raw else text.replace("\\n", "\n").replace("\\t", "\t")


def _with_card(args, name_or_dir, task: str = "generate"):
    """The model's folder; the sampling options left unset in ``args`` are filled from its card
    (its ``task`` settings: "generate", or "infill" for holes)."""
    from .pretrained import fill_settings, generation_defaults, resolve

    folder = resolve(name_or_dir)
    given = {**sampler_options(args), "steps": args.steps, "sampler": args.sampler}
    for name, value in fill_settings(given, generation_defaults(folder, task)).items():  # the card's, unless given
        setattr(args, name, value)
    if getattr(args, "num", 1) > 1 and args.temperature == 0:
        source = "the model card's" if given["temperature"] is None else "--temperature 0"
        print(f"textdiffusion: note: temperature 0 ({source}) is greedy, so all {args.num} results are the same; "
              f"pass --temperature 1 for varied ones", file=sys.stderr)
    return folder


def cmd_generate(args) -> int:
    from .control.templates import has_holes

    prompt = _unescape(args.prompt, args.raw)
    holes = has_holes(prompt)  # a malformed hole is an error before any model loads
    folder = _with_card(args, args.model, "infill" if holes else "generate")
    run = _load(str(folder), args.device)
    if holes:  # holes anywhere: fill them, keep the rest verbatim
        from .control import infill

        for flag, value in (("--length", args.length), ("--watch", args.watch), ("--stop-at-eot", args.stop_at_eot)):
            if value:
                raise UsageError(f"{flag} does not apply to a prompt with holes (size them with [MASK:n] or [MASK:a-b])")

        result = infill(run, prompt, num=args.num, steps=args.steps, sampler=args.sampler, seed=args.seed,
                        label=args.label, guidance=args.guidance, classifier=_classifier(args), **sampler_options(args))
        _print_control(result, args, {"template": prompt, "model": str(run.run_dir)})
        return 0
    if args.watch:
        from .viz import TerminalWatch

        watch = TerminalWatch(run.tokenizer, args.steps)
    else:
        watch = None
    out, texts, sampler = _generate(run, args, prompt, args.num, args.length, on_step=watch)
    if args.json:
        print(json.dumps({"texts": texts, "model": str(run.run_dir), "nfe": out.nfe, "seconds": out.seconds,
                          "tokens_per_second": out.tokens_per_second, "sampler": sampler, "steps": args.steps,
                          "seed": args.seed, "prompt": prompt}))
    else:
        print("\n\n".join(texts))
        print(f"[{sampler}: {out.nfe} network calls, {out.seconds:.2f} s]", file=sys.stderr)
    return 0


def _setting(item: str, flag: str = "--default") -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f"{flag} takes KEY=VALUE, e.g. steps=32; got {item!r}")
    for kind in (int, float):
        try:
            return key.strip(), kind(value)
        except ValueError:
            pass
    return key.strip(), value.strip()


def cmd_export(args) -> int:
    from .pipeline import Pipeline
    from .pretrained import check_settings
    from .sampling import build_sampler

    pipe = Pipeline.from_pretrained(args.run)
    card = dict(pipe.card)
    for task, items, flag in (("generate", args.default, "--default"), ("infill", args.infill_default, "--infill-default")):
        settings = check_settings({**pipe.card.get(task, {}), **dict(_setting(item, flag) for item in items)}, flag)
        options = {k: v for k, v in settings.items() if k not in ("sampler", "steps")}
        build_sampler(settings.get("sampler"), pipe.run.process, pipe.tokenizer, **options)  # they must fit the run
        if settings:
            card[task] = settings
        else:
            card.pop(task, None)
    if args.description:
        card["description"] = args.description
    out = pipe.save_pretrained(args.out, dtype=args.dtype, card=card)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"saved {args.run} ({args.dtype}) in {out}: {size / 1e6:.1f} MB", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from .pretrained import available

    models = available()
    if args.json:
        print(json.dumps(models))
    elif not models:
        print("no shipped models are installed; any run directory works with --model DIR", file=sys.stderr)
    else:
        for name, info in models.items():
            print(f"{name:10s} {info.get('description', '')}  ({info['path']})")
    return 0


def cmd_sample(args) -> int:
    run = _load(args.run, args.device)
    out, texts, sampler = _generate(run, args, args.prompt, args.num, args.length)
    if args.json:
        print(json.dumps({"texts": texts, "samples": texts,  # "samples": the old key, kept for one release
                          "nfe": out.nfe, "tokens_per_second": out.tokens_per_second,
                          "seconds": out.seconds, "sampler": sampler,
                          "steps": out.nfe if sampler == "ar" else args.steps,
                          "length": out.new_tokens.shape[1], "seed": args.seed, "prompt": args.prompt,
                          "label": args.label, "guidance": args.guidance,
                          "process": run.cfg.process.name}))
    else:
        for i, text in enumerate(texts):
            if i:
                print("\n" + "─" * 40)
            print(text)
        print(f"[{sampler}: {out.nfe} network calls, {out.tokens_per_second:,.0f} tokens/s]", file=sys.stderr)
    return 0


def _own_data(given: str, recorded: str) -> bool:
    """Is ``given`` the data the run was trained on? The same path, or, for an exported model
    (which records only the file's name: ``Pipeline.save_pretrained``) or a run trained on
    another machine (its path does not exist here), the same file name."""
    if given == recorded:
        return True
    if "stdlib" in (given, recorded) or not recorded:
        return False
    if Path(given).resolve() == Path(recorded):
        return True
    # a bare name (exported) or a path of another machine: the same file name
    return (Path(recorded).name == recorded or not Path(recorded).exists()) and Path(given).name == Path(recorded).name


def cmd_eval(args) -> int:
    import dataclasses

    import numpy as np

    from .config import DataConfig
    from .data import load_token_splits, read_documents
    from .evaluation import (
        distinct_n,
        evaluate_likelihood,
        judge_perplexity,
        self_bleu,
        unigram_entropy,
    )

    run = _load(args.run, args.device)
    tok = run.tokenizer
    if args.discrete_steps is not None:
        if run.process.name not in ("masked", "uniform"):
            raise UsageError(f"--discrete-steps is for masked and uniform runs; this one is {run.process.name}")
        run.process.num_steps = args.discrete_steps
    own = _own_data(args.data, run.cfg.data.path)
    split = args.split or ("val" if own else "all")
    if split == "all":
        data = DataConfig(path=args.data, glob=run.cfg.data.glob)
        tokens = tok.encode_documents(d.text for d in read_documents(data.path, data.glob))
    else:
        data = dataclasses.replace(run.cfg.data, path=args.data) if own else DataConfig(path=args.data,
                                                                                        glob=run.cfg.data.glob)
        tokens = load_token_splits(data, tok, run.run_dir / "tokenizer.json")[split]
        if len(tokens) == 0:
            raise UsageError(f"the {split} split of {args.data} is empty (try --split all)")
    report = evaluate_likelihood(run.model, run.process, np.asarray(tokens), tok.token_bytes(),
                                 context=run.cfg.model.context, mc_samples=args.mc_samples,
                                 batch_size=args.batch_size, max_windows=args.max_windows, seed=args.seed)
    result = {"run": str(args.run), "process": run.cfg.process.name, "data": args.data, "split": split,
              "discrete_steps": getattr(run.process, "num_steps", None), **report.to_dict()}
    if args.num_samples > 0:
        out, texts, sampler = _generate(run, args, "", args.num_samples, args.length)
        token_lists = out.new_tokens.tolist()
        result.update(sampler=sampler, steps=args.steps, nfe=out.nfe, tokens_per_second=out.tokens_per_second,
                      sample_length=out.new_tokens.shape[1], unigram_entropy=unigram_entropy(token_lists),
                      distinct_1=distinct_n(token_lists, 1), distinct_2=distinct_n(token_lists, 2),
                      distinct_3=distinct_n(token_lists, 3), texts=texts[:2], samples=texts[:2])  # samples: old key
        if len(token_lists) >= 2:
            result["self_bleu"] = self_bleu(token_lists)
        if args.judge:
            judge = _load(args.judge, args.device)
            result["judge"] = str(args.judge)
            result["judge_perplexity"] = judge_perplexity(judge.model, judge.tokenizer, texts)
    if args.json:
        print(json.dumps(result))
    else:
        kind = "exact NLL" if report.exact else "ELBO bound"
        print(f"{args.run} on {args.data} [{split}]: {report.bits_per_token:.4f} ± {report.stderr_bits_per_token:.4f} "
              f"bits/token, {report.bits_per_byte:.4f} bits/byte ({kind}, {report.num_tokens:,} tokens)")
        if "nfe" in result:
            line = (f"samples ({result['sampler']}, {args.steps} steps): {result['nfe']} network calls, "
                    f"{result['tokens_per_second']:,.0f} tokens/s, unigram entropy {result['unigram_entropy']:.3f} bits, "
                    f"distinct-1/2/3 {result['distinct_1']:.3f}/{result['distinct_2']:.3f}/{result['distinct_3']:.3f}")
            if "self_bleu" in result:
                line += f", self-BLEU {result['self_bleu']:.3f}"
            if "judge_perplexity" in result:
                line += f", judge perplexity {result['judge_perplexity']:.3f}"
            print(line)
    return 0


def _read_text(inline: str | None, file: str | None, what: str) -> str:
    if file:
        return Path(file).read_text(encoding="utf-8")
    if inline == "-":
        return sys.stdin.read()
    if inline is None:
        raise UsageError(f"give the {what} (or --file)")
    return inline


def _print_control(result, args, extra: dict) -> None:
    if args.json:
        print(json.dumps({**result.to_dict(), "steps": args.steps, "seed": args.seed, **extra}))
        return
    for i, text in enumerate(result.texts):
        if i:
            print("\n" + "─" * 40)
        print(text)
    print(f"[{result.sampler}: {result.nfe} network calls, {result.seconds:.2f} s]", file=sys.stderr)


def cmd_infill(args) -> int:
    from .control import infill

    if args.template is not None and args.file:
        raise UsageError("give a TEMPLATE or --file, not both")
    template = _read_text(args.template, args.file, "TEMPLATE")
    if args.template not in (None, "-"):
        template = _unescape(template, args.raw)
    run = _load(str(_with_card(args, args.run, "infill")), args.device)
    result = infill(run, template, num=args.num, steps=args.steps, sampler=args.sampler, seed=args.seed,
                    candidates=args.candidates, label=args.label, guidance=args.guidance, classifier=_classifier(args),
                    **sampler_options(args))  # holes and spans have a fixed size
    _print_control(result, args, {"template": template})
    return 0


def _parse_span(span: str) -> tuple[int, int]:
    try:
        a, b = span.split(":")
        return int(a), int(b)
    except ValueError:
        raise UsageError(f"--span takes A:B character offsets, e.g. 10:25; got {span!r}") from None


def cmd_edit(args) -> int:
    from .control import edit

    text = _read_text(args.text, args.file, "text")
    start, end = _parse_span(args.span) if args.span else (None, None)
    run = _load(str(_with_card(args, args.run)), args.device)
    result = edit(run, text, start, end, strength=args.strength, num=args.num, steps=args.steps,
                  sampler=args.sampler, seed=args.seed, label=args.label, guidance=args.guidance,
                  classifier=_classifier(args), **sampler_options(args))  # holes and spans have a fixed size
    _print_control(result, args, {})
    return 0


def cmd_train_classifier(args) -> int:
    from .training.classifier import train_classifier

    if args.lr <= 0:
        raise UsageError(f"--lr must be positive; got {args.lr}")
    info = train_classifier(args.run, args.data, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            layers=args.layers, seed=args.seed, progress=not args.quiet)
    acc = ", ".join(f"t={t}: {a:.3f}" for t, a in info["val_accuracy_at_t"].items())
    print(f"classifier of {len(info['labels'])} labels saved in {args.out}; validation accuracy {acc}", file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    from .control import chat

    run = _load(args.run, args.device)
    opts = sampler_options(args)  # chat always ends replies at end-of-text

    def reply(message: str, history: list, num: int):
        if args.label is not None or args.classifier:
            raise UsageError("chat guides on the prompt; --label and --classifier are for sample, infill and edit")
        return chat(run, message, history, length=args.length, steps=args.steps, sampler=args.sampler,
                    seed=args.seed, num=num, guidance=args.guidance, **opts)

    if args.message is not None:
        result = reply(args.message, [], args.num)
        if args.json:
            print(json.dumps({"replies": result.texts, "message": args.message, **result.to_dict()}))
        else:
            print("\n".join(result.texts))
        return 0
    history: list[tuple[str, str]] = []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            return 0
        result = reply(line.strip(), history, 1)
        if args.json:  # one JSON line per turn
            print(json.dumps({"message": line.strip(), "reply": result.texts[0], "nfe": result.nfe}), flush=True)
        else:
            print(("model> " if interactive else "") + result.texts[0], flush=True)
        history.append((line.strip(), result.texts[0]))


# -- entry point --------------------------------------------------------------------------------


def _out_of_memory(exc: BaseException) -> bool:
    """torch's out-of-memory errors (CUDA's OutOfMemoryError is a RuntimeError; the CPU allocator's
    is a plain RuntimeError naming the allocation)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .errors import TextDiffusionError

    debug = args.debug or bool(os.environ.get("TEXTDIFFUSION_DEBUG"))
    try:
        if getattr(args, "sampler", None) is not None:  # a name the registry answers without torch
            from .sampling.registry import spec

            spec(args.sampler)
        return args.func(args)
    except KeyboardInterrupt:
        saved = args.command == "train" and any((Path(args.out) / d / "state.json").exists()
                                                for d in ("checkpoint", "checkpoint.old"))
        hint = f"; continue with: {_resume_command(args)}" if saved else ""
        print(f"textdiffusion: interrupted{hint}", file=sys.stderr)
        return 130
    except (TextDiffusionError, OSError) as exc:  # bad input or a fixable state: one line
        if debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, OSError) and exc.filename:
            message = f"{exc.strerror}: {exc.filename}"
        print(f"textdiffusion: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        if _out_of_memory(exc):
            print("textdiffusion: error: out of memory: use a smaller --num / batch size, a shorter --length, "
                  "or a smaller model", file=sys.stderr)
            return 2
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"textdiffusion: internal error (a bug, not your input): {type(exc).__name__}: {first}\n"
              f"  rerun with --debug for the traceback, and please report it", file=sys.stderr)
        return 70  # EX_SOFTWARE


def _resume_command(args) -> str:
    """The command that continues an interrupted training run (resume takes the saved config, so
    --data, --process, --config, --sft, --labels and --init are not repeated)."""
    import shlex

    words = ["textdiffusion", "train", "--out", str(args.out), "--resume"] + (["--quiet"] if args.quiet else [])
    return " ".join(shlex.quote(w) for w in words)


if __name__ == "__main__":
    sys.exit(main())
