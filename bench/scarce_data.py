"""Benchmark: scarce unique data, many epochs. Masked diffusion against its regularized AR twin
(issue 39; Prabhudesai et al. 2025, "Diffusion Beats Autoregressive in Data-Constrained
Settings"; Ni et al. 2025, "Diffusion Language Models are Super Data Learners": the AR model
overfits after 10-15 epochs while the diffusion model keeps improving for hundreds; Gao et al.
2025: a fair AR twin needs its own regularization).

    python bench/scarce_data.py                 # the grid: 14 runs, about 7 h on 2 CPU cores (the plan says)
    python bench/scarce_data.py --resume        # continue it (after Ctrl-C, a kill, a reboot)
    python bench/scarce_data.py --plan          # the runs and the budget only (seconds)
    python bench/scarce_data.py --quick         # the whole pipeline in a couple of minutes (tiny model)
    python bench/scarce_data.py --gpu --corpus shakespeare.txt   # the grid sized for one GPU (the GPU preset)

Data: Shakespeare's complete works (``--corpus``, ../shared/data/shakespeare_complete_modern.txt).
Held out: the corpus's standard validation split (its last 5 %, cut at the next newline), the same
text for every run. Each unique-data size is a prefix of the standard training split, cut at a
newline, so the sizes are nested. A size is named in thousands of BPE tokens and cut at
``CHARS_PER_TOKEN`` characters a token; the tokens each size really holds (its own BPE-4096
tokenizer, as ``textdiffusion train`` trains it on that prefix) are counted and reported.
Each size is a file of its prefix followed by the validation text, with ``data.val_fraction``
set so that the library's split gives back exactly those two parts (checked before training).

Runs, through the real CLI: for each size and regularization setting the masked diffusion model
(``--process masked``, configs/english.toml's recipe) and its AR twin (``--process ar --set
model.time_cond=false``) on one backbone, trained for an epoch cap (``train.epochs``) with early
stopping (``train.patience``: validations without a new best), the best validated weights kept in
``RUN/best``. Settings (``--settings``): base (no dropout, weight decay 0.1), drop (dropout 0.1),
strong (dropout 0.1, weight decay 0.5, input-token corruption 0.1). The first ``--sweep-sizes``
sizes get every setting; the larger ones get each twin's best setting at the largest swept size.
Each run is then scored once: ``textdiffusion eval RUN --checkpoint best --data VAL --max-windows
0``, bits per byte from counted bytes on every whole window of the validation text (the tail
short of a window is left out): the AR twin's exact NLL, the diffusion model's ELBO, an upper
bound on its NLL (a diffusion win is a win; a loss may be the bound's slack).

Model: 4 layers x 128, 4 heads, context 128, BPE 4096 (2.3M parameters, 1.8M outside the
embeddings): with 20k-200k unique tokens that is 9-90 parameters a token, the data-constrained
regime, and a third of the English model's FLOPs a token (4 x 256, context 256), so that the
diffusion model gets hundreds of epochs at the smallest size within the budget.

Budget (printed at the start; ``--plan`` prints only that): 2 threads a run, one run at a time.
Measured in the pilot on this project's 2-core AMD EPYC (AVX2, no native bf16: float32), under a
load average of about 9 from other work: 569 training tokens/s for this model (269 for the English
4 x 256), about 900 tokens a CPU-second; the plan assumes 2,500 tokens/s on an idle machine until this
grid's own finished runs give the measured rate. Caps: the AR twin 40 epochs (it stops after 6
validations, one an epoch, without a new best), the diffusion model 300 / 100 / 40 epochs at 20k /
60k / 200k tokens (6-8M training tokens a run; stopped after 12 of its 60 validations without a
new best): 64M training-token equivalents with validations and scoring, 7.1 h at 2,500 tokens/s
if every run went to its cap. The sizes are far below the corpus's 1.2M training tokens because
hundreds of epochs of 1M tokens (or even of 0.3M) are out of a CPU budget of hours: the question
is asked where it can be answered, and the trend across the three sizes says how far it carries.
Validation curves are the training's validation loss (nats/token on fixed windows; the diffusion
model's training objective, without the small reconstruction term eval adds) times the validation
text's tokens a byte under the size's tokenizer: bits/byte, comparable between the twins.

Resumable: ``--out`` holds results.json (the grid's settings, every run's state and scores,
written after each step), the runs, the data files and scarce.log; ``--resume`` skips the runs
whose final evaluation is recorded and continues the others (``textdiffusion train --out RUN
--resume``). Ctrl-C (or SIGTERM) stops the training at its next step with a checkpoint. Written
after each run: results.md (the tables, the machine and date), curves.png (held-out bits/byte
against epochs and against training FLOPs, both twins, every size) and gap.png (the diffusion
model's gap to its twin's best against FLOPs, with the fit that extrapolates it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import EXE, REPO, Log, cpu_model  # noqa: E402

CORPUS = REPO.parent / "shared" / "data" / "shakespeare_complete_modern.txt"
# BPE-4096 trained on a 400,029-character prefix of the corpus cut it into 123k tokens (the pilot)
CHARS_PER_TOKEN = 3.25
TWINS = ("ar", "diffusion")
# the regularization sweep, the same for both twins (every key set in every setting)
SETTINGS = {
    "base": {"model.dropout": 0.0, "train.weight_decay": 0.1, "train.input_noise": 0.0},
    "drop": {"model.dropout": 0.1, "train.weight_decay": 0.1, "train.input_noise": 0.0},
    "strong": {"model.dropout": 0.1, "train.weight_decay": 0.5, "train.input_noise": 0.1},
}
DESCRIBE = {"base": "none (weight decay 0.1)", "drop": "dropout 0.1",
            "strong": "dropout 0.1, weight decay 0.5, input noise 0.1"}
# the grid (FULL) and the pipeline check (QUICK); every key is also a command-line option
FULL = dict(sizes=[20, 60, 200], sweep_sizes=None, settings=["base", "drop", "strong"], ar_epochs=[40],
            diffusion_epochs=[300, 100, 40], ar_patience=6, diffusion_patience=12, diffusion_evals=60,
            layers=4, width=128, heads=4, context=128, batch_size=32, vocab=4096, warmup=20, mc_samples=4,
            rate=2500.0)
QUICK = dict(sizes=[2], sweep_sizes=None, settings=["base"], ar_epochs=[2], diffusion_epochs=[3], ar_patience=0,
             diffusion_patience=0, diffusion_evals=3, layers=1, width=32, heads=2, context=32, batch_size=8,
             vocab=300, warmup=4, mc_samples=1, rate=20000.0)
# the same question where the papers ask it, for one GPU (--gpu): sizes up to the corpus's 1.2M training
# tokens, a model of 8 x 512 (about 29M parameters with BPE 4096), epochs into the hundreds; 0.7 h if
# every run went to its cap at the assumed rate of 400k tokens/s (not measured: no GPU was lent)
GPU = dict(sizes=[100, 300, 1000], sweep_sizes=None, settings=["base", "drop", "strong"], ar_epochs=[60],
           diffusion_epochs=[800, 400, 200], ar_patience=8, diffusion_patience=15, diffusion_evals=80,
           layers=8, width=512, heads=8, context=256, batch_size=64, vocab=4096, warmup=100, mc_samples=8,
           rate=400_000.0)
# the settings that make a grid: a --resume with other values is refused (its runs would not compare)
GRID_KEYS = ("corpus", "sizes", "sweep_sizes", "settings", "ar_epochs", "diffusion_epochs", "ar_patience",
             "diffusion_patience", "diffusion_evals", "layers", "width", "heads", "context", "batch_size", "vocab",
             "warmup", "mc_samples")
EVAL_BATCHES = 4  # validation windows during training: 4 batches (128 windows of 128 tokens in the grid)
CKPT_EVERY = 100  # steps between checkpoints (Ctrl-C and SIGTERM checkpoint the last step anyway)


class Stop(Exception):
    """SIGTERM or SIGHUP reached this script (Ctrl-C arrives as KeyboardInterrupt)."""


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    say = Log(out / "scarce.log")
    say(f"bench/scarce_data.py {' '.join(sys.argv[1:])}")
    state = load_state(out, args, say)
    for name in ("SIGTERM", "SIGHUP"):  # stop like Ctrl-C (the training checkpoints its last step)
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:  # (nohup ignores SIGHUP: keep it so)
            signal.signal(sig, _raise_stop)
    try:
        prepare_data(out, args, state, say)
        plan = grid(state)
        print_plan(plan, state, args, say)
        if args.plan:
            return
        for i, run in enumerate(plan, 1):
            do_run(i, len(plan), run, out, args, state, say)
            report(out, state)
        say(f"done: {out / 'results.md'}, {out / 'curves.png'}, {out / 'gap.png'}")
        print((out / "results.md").read_text())
    except (KeyboardInterrupt, Stop):
        save_state(out, state)
        raise SystemExit("bench/scarce_data.py: stopped; rerun with --resume to continue (finished runs are kept, "
                         "the training from its last checkpoint)") from None


def _raise_stop(signum, frame):
    raise Stop(signal.Signals(signum).name)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="folder for data, runs and results (default bench/out/scarce, "
                                               "bench/out/scarce-quick with --quick)")
    p.add_argument("--resume", action="store_true", help="continue the grid in --out (finished runs are skipped)")
    p.add_argument("--plan", action="store_true", help="prepare the data, print the runs and the budget, and stop")
    p.add_argument("--gpu", action="store_true", help="the grid sized for one GPU (sizes 100k-1M tokens, 8 x 512, "
                                                    "hundreds of epochs; --corpus where ../shared does not travel)")
    p.add_argument("--quick", action="store_true", help="a tiny model, one size, both twins, one setting, a few "
                                                        "steps: checks the pipeline end to end")
    p.add_argument("--corpus", default=str(CORPUS), help="the text file (default the Shakespeare corpus)")
    p.add_argument("--sizes", type=int, nargs="+", help=f"unique-data sizes in thousands of tokens "
                                                        f"(default {' '.join(map(str, FULL['sizes']))})")
    p.add_argument("--sweep-sizes", type=int, help="the first N sizes get every setting; the larger ones each "
                                                   "twin's best (default: all but the largest)")
    p.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), help="regularization settings swept "
                                                                          "(default all three)")
    p.add_argument("--ar-epochs", type=float, nargs="+", help="epoch cap of the AR twin, one value or one per "
                                                              f"size (default {FULL['ar_epochs'][0]:g})")
    p.add_argument("--diffusion-epochs", type=float, nargs="+", help="epoch cap of the diffusion model, one value "
                   f"or one per size (default {' '.join(map(str, FULL['diffusion_epochs']))})")
    p.add_argument("--ar-patience", type=int, help="validations (one an epoch) without a new best that stop the "
                                                   f"AR twin; 0 = off (default {FULL['ar_patience']})")
    p.add_argument("--diffusion-patience", type=int, help="the same for the diffusion model "
                                                          f"(default {FULL['diffusion_patience']})")
    p.add_argument("--diffusion-evals", type=int, help="validations over the diffusion model's epoch cap, at "
                                                       f"most one an epoch (default {FULL['diffusion_evals']})")
    p.add_argument("--layers", type=int, help=f"transformer layers of both twins (default {FULL['layers']})")
    p.add_argument("--width", type=int, help=f"d_model (default {FULL['width']})")
    p.add_argument("--heads", type=int, help=f"attention heads (default {FULL['heads']})")
    p.add_argument("--context", type=int, help=f"tokens a window (default {FULL['context']})")
    p.add_argument("--batch-size", type=int, help=f"windows a step (default {FULL['batch_size']})")
    p.add_argument("--vocab", type=int, help=f"BPE vocabulary (default {FULL['vocab']})")
    p.add_argument("--warmup", type=int, help=f"learning-rate warm-up steps (default {FULL['warmup']})")
    p.add_argument("--mc-samples", type=int, help="draws of t a window in the diffusion model's final ELBO "
                                                  f"(default {FULL['mc_samples']})")
    p.add_argument("--rate", type=float, help="training tokens/s the budget plan assumes until this grid's runs "
                                              f"are measured (default {FULL['rate']:g}: the docstring's Budget)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of each training and evaluation (default 2)")
    args = p.parse_args()
    if args.quick and args.gpu:
        p.error("--quick and --gpu are two presets: give one")
    preset = QUICK if args.quick else GPU if args.gpu else FULL
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    name = "scarce-quick" if args.quick else "scarce-gpu" if args.gpu else "scarce"
    args.out = args.out or str(REPO / "bench" / "out" / name)
    args.corpus = str(Path(args.corpus).resolve())
    if not Path(args.corpus).is_file():
        p.error(f"--corpus {args.corpus}: no such file")
    for name in ("layers", "width", "heads", "context", "batch_size", "warmup", "mc_samples", "diffusion_evals",
                 "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.sizes) < 1 or len(set(args.sizes)) != len(args.sizes):
        p.error("--sizes must be different whole numbers of thousands of tokens, each at least 1")
    args.sizes = sorted(args.sizes)
    if args.sweep_sizes is None:
        args.sweep_sizes = max(1, len(args.sizes) - 1)
    if not 1 <= args.sweep_sizes <= len(args.sizes):
        p.error(f"--sweep-sizes must be in 1..{len(args.sizes)} (the number of --sizes)")
    for name in ("ar_epochs", "diffusion_epochs"):
        caps = getattr(args, name)
        if len(caps) == 1:
            caps = caps * len(args.sizes)
        if len(caps) != len(args.sizes) or min(caps) <= 0:
            p.error(f"--{name.replace('_', '-')} takes one positive cap, or one for each of the {len(args.sizes)} sizes")
        setattr(args, name, caps)
    if args.ar_patience < 0 or args.diffusion_patience < 0:
        p.error("--ar-patience and --diffusion-patience must be >= 0 (0 = no early stop)")
    if args.width % args.heads or (args.width // args.heads) % 2:
        p.error(f"--width ({args.width}) must be an even multiple of --heads ({args.heads}): RoPE needs an even head size")
    if args.vocab < 260:
        p.error("--vocab must be at least 260 (256 bytes and the special tokens)")
    if args.rate <= 0:
        p.error("--rate must be positive (training tokens a second)")
    args.settings = list(dict.fromkeys(args.settings))
    return args


# -- state ----------------------------------------------------------------------------------------

def load_state(out: Path, args, say) -> dict:
    """results.json of --out: a new grid, or (--resume) the saved one, which must be the same grid."""
    path = out / "results.json"
    grid_args = {k: getattr(args, k) for k in GRID_KEYS}
    if path.exists():
        if not args.resume and not args.plan:
            raise say.fail(f"{out} holds a grid already (results.json): rerun with --resume to continue it, or "
                           f"give another --out")
        state = json.loads(path.read_text())
        diff = [f"{k}={state['grid'][k]} (asked {grid_args[k]})" for k in GRID_KEYS if state["grid"].get(k) != grid_args[k]]
        if diff:
            raise say.fail(f"{out} holds a grid of other settings: {', '.join(diff)}; give another --out")
        state["threads"] = args.threads
        say(f"resuming the grid in {out}: {sum(r['status'] == 'done' for r in state['runs'].values())} runs done")
        return state
    if (out / "runs").exists() and any((out / "runs").iterdir()):
        raise say.fail(f"{out}/runs holds runs but no results.json: give another --out, or remove {out / 'runs'}")
    import torch

    state = {"plan_only": args.plan, "grid": grid_args, "machine": cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
             "python": platform.python_version(), "torch": torch.__version__,
             "started": datetime.datetime.now().isoformat(timespec="seconds"), "data": {}, "runs": {},
             "carried": {}}
    save_state(out, state)
    return state


def save_state(out: Path, state: dict) -> None:
    """results.json, replaced whole (a kill mid-write keeps the old one); nothing for a --plan of a new grid."""
    from textdiffusion.fileio import write_atomic

    if state.get("plan_only"):
        return
    state["updated"] = datetime.datetime.now().isoformat(timespec="seconds")
    write_atomic(out / "results.json", json.dumps(state, indent=1) + "\n")


# -- data -----------------------------------------------------------------------------------------

def prepare_data(out: Path, args, state: dict, say) -> None:
    """val.txt (the standard validation split) and, per size, train-<size>k.txt (a prefix of the
    standard training split, then the validation text) with the val_fraction that splits it back
    into exactly those parts; its tokens counted with the BPE tokenizer its runs will train."""
    from textdiffusion.data.sources import Document, split_documents
    from textdiffusion.tokenizers import train_tokenizer

    data = out / "data"
    data.mkdir(exist_ok=True)
    text = Path(args.corpus).read_text(encoding="utf-8")
    parts = split_documents([Document("corpus", text)], 0.05, stdlib=False)
    train, val = parts["train"][0], parts["val"][0]
    _write_if_changed(data / "val.txt", val)
    state["data"].update(corpus=args.corpus, corpus_bytes=len(text.encode()), train_bytes=len(train.encode()),
                         val_bytes=len(val.encode()), val_file=str(data / "val.txt"))
    sizes = state["data"].setdefault("sizes", {})
    for k in args.sizes:
        want = round(k * 1000 * CHARS_PER_TOKEN)
        if want >= len(train):
            raise say.fail(f"--sizes {k}: the training split of {args.corpus} holds about "
                           f"{len(train) / CHARS_PER_TOKEN / 1000:.0f}k tokens; choose smaller sizes")
        cut = train.find("\n", want)
        prefix = train[: cut + 1] if cut >= 0 else train
        body = prefix + val
        # the library's cut: int(len * (1 - f)), then past the next newline; aim it at the prefix's last newline
        fraction = (len(body) - (len(prefix) - 1) - 0.5) / len(body)
        check = split_documents([Document("x", body)], fraction, stdlib=False)
        if check["train"] != [prefix] or check["val"] != [val]:
            raise say.fail(f"size {k}k: data.val_fraction={fraction!r} does not split the data file back into the "
                           f"prefix and the validation text (a bug in this script)")
        path = data / f"train-{k}k.txt"
        _write_if_changed(path, body)
        key = str(k)
        if key not in sizes or sizes[key]["chars"] != len(prefix):
            tok = train_tokenizer("bpe", [prefix], args.vocab)
            sizes[key] = {"file": str(path), "val_fraction": fraction, "chars": len(prefix),
                          "bytes": len(prefix.encode()), "tokens": int(len(tok.encode(prefix))),
                          "val_tokens_per_byte": len(tok.encode(val)) / len(val.encode())}
        s = sizes[key]
        say(f"size {k}k: {s['bytes']:,} bytes of training text = {s['tokens']:,} tokens "
            f"({s['bytes'] / s['tokens']:.2f} bytes a token); validation {state['data']['val_bytes']:,} bytes, "
            f"{s['val_tokens_per_byte']:.3f} tokens a byte with this size's tokenizer")
    save_state(out, state)


def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file holds it already (a new mtime would re-tokenize the corpus)."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


# -- the grid -------------------------------------------------------------------------------------

def grid(state: dict) -> list[dict]:
    """Every run, in order: sizes ascending; at a swept size every setting, AR first; at a larger
    size one run a twin, its setting chosen when the sweep is done (None until then)."""
    g = state["grid"]
    plan = []
    for n, k in enumerate(g["sizes"]):
        swept = n < g["sweep_sizes"]
        for setting in g["settings"] if swept else [None]:
            for twin in TWINS:
                plan.append({"size": k, "twin": twin, "setting": setting if swept else state["carried"].get(twin),
                             "carried": not swept, "epochs": (g["ar_epochs"] if twin == "ar" else g["diffusion_epochs"])[n]})
    return plan


def run_name(run: dict) -> str:
    return f"{run['size']}k-{run['twin']}-{run['setting']}"


def cadence(run: dict, state: dict) -> tuple[int, int, float]:
    """(validation every this many steps, patience in validations, steps an epoch) of a run: the AR
    twin validates once an epoch; the diffusion model --diffusion-evals times over its cap, at most
    once an epoch."""
    g, size = state["grid"], state["data"]["sizes"][str(run["size"])]
    per_epoch = (size["tokens"] + 1) / (g["batch_size"] * g["context"])  # (+1: the end-of-text token)
    epochs_between = 1.0 if run["twin"] == "ar" else max(1.0, round(run["epochs"] / g["diffusion_evals"]))
    patience = g["ar_patience"] if run["twin"] == "ar" else g["diffusion_patience"]
    return max(1, round(epochs_between * per_epoch)), patience, per_epoch


def cost(run: dict, state: dict) -> float:
    """Training-token equivalents of a run at its cap: the steps, its validations (a forward pass is
    a third of a step's work) and the final evaluation (the ELBO's draws of t)."""
    g, size = state["grid"], state["data"]["sizes"][str(run["size"])]
    every, _, per_epoch = cadence(run, state)
    steps = math.ceil(run["epochs"] * per_epoch)
    window = g["batch_size"] * g["context"]
    val_tokens = state["data"]["val_bytes"] * size["val_tokens_per_byte"]
    final = val_tokens * (g["mc_samples"] if run["twin"] == "diffusion" else 1) / 3
    return steps * window + (steps // every) * EVAL_BATCHES * window / 3 + final


def print_plan(plan: list[dict], state: dict, args, say) -> None:
    """The runs, their caps and the budget: worst case (every run to its cap) at the measured rate
    (finished runs of this grid) or, before any, at --rate."""
    done = [r for r in state["runs"].values() if r["status"] == "done" and r.get("train_seconds")]
    tokens = sum(r["tokens_trained"] for r in done)
    seconds = sum(r["train_seconds"] for r in done)
    rate = tokens / seconds if seconds > 0 else args.rate
    source = (f"measured on this grid's {len(done)} finished runs (wall clock, startup and validation included)"
              if seconds > 0 else "--rate: the pilot's estimate for an idle machine")
    say(f"plan: {len(plan)} runs on {state['machine']}, {args.threads} threads each, at {rate:,.0f} training "
        f"tokens/s ({source})")
    say(f"  {'#':>3} {'size':>6} {'twin':<10} {'setting':<8} {'epoch cap':>9} {'val every':>9} {'patience':>8} "
        f"{'tokens (cap)':>13} {'hours':>6}  status")
    total = left = 0.0
    for i, run in enumerate(plan, 1):
        every, patience, per_epoch = cadence(run, state)
        c = cost(run, state)
        rec = state["runs"].get(run_name(run)) if run["setting"] else None
        status = rec["status"] if rec else "to do"
        total += c
        left += 0 if status == "done" else c
        setting = run["setting"] or "best"
        say(f"  {i:>3} {run['size']:>5}k {run['twin']:<10} {setting:<8} {run['epochs']:>9g} "
            f"{every / per_epoch:>7.2g}ep {patience or 'off':>8} {c / 1e6:>12.1f}M {c / rate / 3600:>6.2f}  {status}")
    say(f"  budget: {total / 1e6:.1f}M training-token equivalents = {total / rate / 3600:.1f} h if every run trains "
        f"to its cap (early stopping ends most AR runs well before); left: {left / rate / 3600:.1f} h")


def settings_flags(run: dict, state: dict) -> list[str]:
    """--set flags of a new run: the English recipe (configs/english.toml) on this grid's backbone,
    the run's regularization, epochs, patience and validation cadence."""
    g = state["grid"]
    every, patience, _ = cadence(run, state)
    sets = {"model.n_layer": g["layers"], "model.d_model": g["width"], "model.n_head": g["heads"],
            "model.context": g["context"], "data.vocab_size": g["vocab"],
            "data.val_fraction": repr(state["data"]["sizes"][str(run["size"])]["val_fraction"]),
            "train.batch_size": g["batch_size"], "train.epochs": run["epochs"], "train.patience": patience,
            "train.eval_every": every, "train.eval_batches": EVAL_BATCHES, "train.ckpt_every": CKPT_EVERY,
            "train.warmup_steps": g["warmup"], "train.ema": 0, "train.threads": state["threads"],
            **SETTINGS[run["setting"]]}
    if run["twin"] == "ar":
        sets["model.time_cond"] = "false"
    return [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]


def choose_carried(state: dict, say) -> None:
    """Each twin's best setting at the largest swept size (lowest held-out bits/byte), for the larger sizes."""
    g = state["grid"]
    k = g["sizes"][g["sweep_sizes"] - 1]
    for twin in TWINS:
        if twin in state["carried"]:
            continue
        scores = {r["setting"]: r["eval"]["bits_per_byte"] for r in state["runs"].values()
                  if r["size"] == k and r["twin"] == twin and r["status"] == "done"}
        best = min(scores, key=scores.get)
        state["carried"][twin] = best
        say(f"{twin}: best setting at {k}k tokens is {best} ({scores[best]:.4f} bits/byte): carried to the larger sizes")


def do_run(i: int, n: int, run: dict, out: Path, args, state: dict, say) -> None:
    """Train (or continue) one run and score its best checkpoint; skipped when already scored."""
    if run["setting"] is None:
        choose_carried(state, say)
        run["setting"] = state["carried"][run["twin"]]
    name = run_name(run)
    rec = state["runs"].setdefault(name, {**run, "name": name, "status": "to do", "trainings": 0,
                                          "evaluations": 0, "train_seconds": 0.0, "tokens_trained": 0})
    if rec["status"] == "done":
        say(f"[{i}/{n}] {name}: done already ({rec['eval']['bits_per_byte']:.4f} bits/byte at epoch "
            f"{rec['best_epoch']:.1f})")
        return
    path = out / "runs" / name
    say(f"[{i}/{n}] {name}: {run['twin']} twin, {run['size']}k tokens, {DESCRIBE[run['setting']]}, "
        f"cap {run['epochs']:g} epochs")
    if not finished_training(path):
        before = trained_tokens(path)
        if (path / "config.json").exists():
            if not args.resume:
                raise say.fail(f"{path} holds an unfinished run: rerun with --resume to continue it")
            cmd = ["train", "--out", path, "--resume"]
            say(f"[{i}/{n}] {name}: continuing from step {checkpoint_step(path) or 0}")
        else:
            process = ["--process", "ar"] if run["twin"] == "ar" else ["--process", "masked"]
            cmd = ["train", "--data", state["data"]["sizes"][str(run["size"])]["file"], "--out", path,
                   "--config", REPO / "configs" / "english.toml", *process, *settings_flags(run, state)]
        rec["status"] = "training"
        rec["trainings"] += 1
        save_state(out, state)
        say("  textdiffusion " + " ".join(map(str, cmd)))
        start = time.perf_counter()
        try:
            code, _ = child([str(EXE), *map(str, cmd)], say)
        finally:
            rec["train_seconds"] += time.perf_counter() - start
            rec["tokens_trained"] += trained_tokens(path) - before
            save_state(out, state)
        if code:
            raise say.fail(f"{name}: textdiffusion train stopped (exit {code}); rerun with --resume to continue "
                           f"from its last checkpoint")
    rec["status"] = "trained"
    rec.update(summarize(path, state))
    say(f"[{i}/{n}] {name}: scoring RUN/best (epoch {rec['best_epoch']:.1f}) on the validation text")
    rec["evaluations"] += 1
    start = time.perf_counter()
    code, stdout = child([str(EXE), "eval", path, "--checkpoint", "best", "--data", state["data"]["val_file"],
                          "--json", "--max-windows", "0", "--mc-samples", str(state["grid"]["mc_samples"]),
                          "--num-samples", "0", "--threads", str(state["threads"])], say, capture=True)
    if code:
        raise say.fail(f"{name}: textdiffusion eval failed (exit {code}); rerun with --resume to try again")
    result = json.loads(stdout.strip().splitlines()[-1])
    rec["eval"] = {k: result[k] for k in ("bits_per_byte", "bits_per_token", "stderr_bits_per_token", "num_tokens",
                                          "num_bytes", "num_windows", "mc_samples", "exact")}
    rec["eval_seconds"] = time.perf_counter() - start
    rec["status"] = "done"
    save_state(out, state)
    e = rec["eval"]
    say(f"[{i}/{n}] {name}: {e['bits_per_byte']:.4f} bits/byte ({'exact NLL' if e['exact'] else 'ELBO bound'}) at "
        f"epoch {rec['best_epoch']:.1f} of {rec['epochs_trained']:.1f}{' (stopped early)' if rec['stopped_early'] else ''}, "
        f"{rec['train_seconds'] / 60:.1f} min training")


def child(cmd: list[str], say, capture: bool = False) -> tuple[int, str]:
    """Run a command in its own session, its stderr (the training's progress line) to the screen and
    the log; (exit status, its stdout when ``capture``). Ctrl-C or SIGTERM here is passed on as one
    SIGINT (the training checkpoints its last step and stops), waited for, and raised again."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE,
                            start_new_session=True)
    stdout = []
    try:
        fd = proc.stderr.fileno()
        while chunk := os.read(fd, 4096):
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
            say.raw(chunk.decode("utf-8", errors="replace").replace("\r", "\n"))
        if capture:
            stdout.append(proc.stdout.read().decode())
        return proc.wait(), "".join(stdout)
    except (KeyboardInterrupt, Stop):
        if proc.poll() is None:
            print("\nstopping: the training checkpoints its last step", file=sys.stderr, flush=True)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise


def checkpoint_step(path: Path) -> int | None:
    try:
        return json.loads((path / "checkpoint" / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


def trained_tokens(path: Path) -> int:
    try:
        return int(json.loads((path / "checkpoint" / "state.json").read_text())["tokens_seen"])
    except (OSError, ValueError, KeyError):
        return 0


def finished_training(path: Path) -> bool:
    """The run reached its epoch cap, or stopped early (patience used up), by its checkpoint."""
    try:
        st = json.loads((path / "checkpoint" / "state.json").read_text())
        tc = json.loads((path / "config.json").read_text())["train"]
    except (OSError, ValueError, KeyError):
        return False
    return st["step"] >= tc["max_steps"] or bool(tc["patience"]) and st.get("evals_since_best", 0) >= tc["patience"]


def summarize(path: Path, state: dict) -> dict:
    """Best epoch and step (RUN/best), epochs and tokens trained, FLOPs a token, the validation curve."""
    from textdiffusion.runs import load_run
    from textdiffusion.training import mfu
    from textdiffusion.viz.curves import read_curves

    st = json.loads((path / "checkpoint" / "state.json").read_text())
    cfg = json.loads((path / "config.json").read_text())
    best = json.loads((path / "best" / "checkpoint" / "state.json").read_text())
    run = load_run(path)
    per_token = mfu.flops_per_token(run.model, run.process, cfg["model"]["context"])
    curves = read_curves(path)
    last = max(curves.train + curves.val)  # (step, epoch, loss) of the last logged step
    per_epoch = last[0] / last[1] if last[1] else None  # steps an epoch, as the trainer counts them
    return {"best_step": best["step"], "best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
            "steps": st["step"], "max_steps": cfg["train"]["max_steps"], "tokens_seen": st["tokens_seen"],
            "epochs_trained": round(st["step"] / per_epoch, 3) if per_epoch else None,
            "stopped_early": st["step"] < cfg["train"]["max_steps"], "flops_per_token": per_token,
            "train_flops": per_token * st["tokens_seen"], "params": run.model.num_params(non_embedding=False),
            "tokens_per_step": cfg["train"]["batch_size"] * cfg["train"]["grad_accum"] * cfg["model"]["context"],
            "curve": [[s, e, v] for s, e, v in curves.val]}


# -- results --------------------------------------------------------------------------------------

def curve_bits(rec: dict, state: dict) -> list[tuple[float, float, float]]:
    """(epoch, training FLOPs, held-out bits/byte) of each validation of a run: its validation loss
    (nats/token, on the training's fixed validation windows; the diffusion model's training
    objective) times the validation text's tokens a byte under the size's tokenizer."""
    tpb = rec["eval"]["num_tokens"] / rec["eval"]["num_bytes"] if "eval" in rec else \
        state["data"]["sizes"][str(rec["size"])]["val_tokens_per_byte"]
    return [(e, s * rec["tokens_per_step"] * rec["flops_per_token"], v / math.log(2) * tpb) for s, e, v in rec["curve"]]


def best_of(state: dict, size: int, twin: str) -> dict | None:
    runs = [r for r in state["runs"].values() if r["size"] == size and r["twin"] == twin and r["status"] == "done"]
    return min(runs, key=lambda r: r["eval"]["bits_per_byte"]) if runs else None


def extrapolate(state: dict, size: int) -> dict | None:
    """Where the diffusion model's curve meets its twin's best, at one size: the running best of its
    held-out bits/byte (the curve of its best setting) against the lowest point of the AR twin's
    curves (both read from the validations during training, so they share their windows). Seen in
    the curves (``crossover_flops``), or extrapolated: a line fitted to the running best against
    log10 FLOPs over the last half (in log FLOPs) of the run, solved for the twin's best."""
    import numpy as np

    ar, dm = best_of(state, size, "ar"), best_of(state, size, "diffusion")
    if ar is None or dm is None:
        return None
    target = min(b for r in state["runs"].values() if r["size"] == size and r["twin"] == "ar"
                 and r["status"] == "done" for _, _, b in curve_bits(r, state))
    pts = curve_bits(dm, state)
    running, low = [], math.inf
    for e, f, b in pts:
        low = min(low, b)
        running.append((e, f, low))
    out = {"target": target, "diffusion_best_curve": running[-1][2], "gap_curve": running[-1][2] - target,
           "crossover_flops": next((f for _, f, b in running if b <= target), None), "fit": None}
    if out["crossover_flops"] is not None or len(running) < 4:
        return out
    x, y = np.log10([f for _, f, _ in running]), np.array([b for _, _, b in running])
    tail = x >= (x[0] + x[-1]) / 2
    if tail.sum() < 3:
        tail[-3:] = True
    slope, intercept = np.polyfit(x[tail], y[tail], 1)
    fit = {"slope_bits_per_decade": float(slope), "intercept": float(intercept),
           "from_flops": float(10 ** x[tail][0]), "to_flops": float(10 ** x[-1])}
    if slope < 0:
        need = 10 ** ((target - intercept) / slope)
        per_epoch_flops = dm["flops_per_token"] * state["data"]["sizes"][str(size)]["tokens"]
        fit.update(flops_needed=float(need), epochs_needed=float(need / per_epoch_flops),
                   factor=float(need / running[-1][1]))
    out["fit"] = fit
    return out


def size_trend(state: dict) -> dict | None:
    """The gap of the bests (diffusion - AR, final evaluations) against log10 unique tokens, a line
    through the sizes: the size at which it would close, if it shrinks towards smaller data."""
    import numpy as np

    pts = []
    for k in state["grid"]["sizes"]:
        ar, dm = best_of(state, k, "ar"), best_of(state, k, "diffusion")
        if ar and dm:
            pts.append((state["data"]["sizes"][str(k)]["tokens"], dm["eval"]["bits_per_byte"] - ar["eval"]["bits_per_byte"]))
    if len(pts) < 2:
        return None
    slope, intercept = np.polyfit(np.log10([t for t, _ in pts]), [g for _, g in pts], 1)
    trend = {"gaps": pts, "slope_bits_per_decade": float(slope), "intercept": float(intercept)}
    if slope != 0:
        trend["crosses_zero_at_tokens"] = float(10 ** (-intercept / slope))
    return trend


def report(out: Path, state: dict) -> None:
    """results.md, curves.png and gap.png from what is done so far; results.json keeps the figures."""
    state["extrapolation"] = {str(k): extrapolate(state, k) for k in state["grid"]["sizes"]}
    state["size_trend"] = size_trend(state)
    save_state(out, state)
    (out / "results.md").write_text(markdown(state) + "\n")
    try:
        plot_curves(state, out / "curves.png")
        plot_gap(state, out / "gap.png")
    except ImportError:
        print("bench/scarce_data.py: no plots (matplotlib is missing: pip install matplotlib)", file=sys.stderr)


def _flops(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


def markdown(state: dict) -> str:
    g, d = state["grid"], state["data"]
    lines = [f"Machine: {state['machine']}, {state['cores']} cores, {state['threads']} threads a run; Python "
             f"{state['python']}, torch {state['torch']}. Started {state['started']}, updated {state['updated']}.", "",
             f"Corpus: {Path(d['corpus']).name}; held out: its standard validation split ({d['val_bytes']:,} bytes, "
             f"every run; scored in whole windows of the context). Model: {g['layers']} layers x {g['width']}, {g['heads']} heads, context {g['context']}, "
             f"BPE {g['vocab']} trained on each size's text; batch {g['batch_size']}. Bits/byte from counted bytes "
             f"(`textdiffusion eval RUN --checkpoint best --max-windows 0`): the AR twin's exact NLL, the diffusion "
             f"model's ELBO ({g['mc_samples']} draws of t a window), an upper bound on its NLL.", ""]
    sweep = g["sizes"][: g["sweep_sizes"]]
    if g["sweep_sizes"] < len(g["sizes"]):
        lines += [f"Settings swept at {', '.join(f'{k}k' for k in sweep)} tokens; the larger sizes get each twin's "
                  f"best setting at {sweep[-1]}k: AR {state['carried'].get('ar', '(not yet chosen)')}, diffusion "
                  f"{state['carried'].get('diffusion', '(not yet chosen)')}.", ""]
    lines += ["| unique tokens | twin | regularization | best epoch | held-out bits/byte (RUN/best) | epochs trained "
              "(cap) | training FLOPs | wall time |", "|---|---|---|---|---|---|---|---|"]
    for k in g["sizes"]:
        for r in sorted((r for r in state["runs"].values() if r["size"] == k and r["status"] == "done"),
                        key=lambda r: (r["twin"], g["settings"].index(r["setting"]) if r["setting"] in g["settings"] else 9)):
            e = r["eval"]
            kind = "exact" if e["exact"] else "ELBO"
            stop = ", stopped early" if r["stopped_early"] else ""
            carried = " (carried)" if r["carried"] else ""
            lines.append(f"| {d['sizes'][str(k)]['tokens']:,} | {r['twin']} | {DESCRIBE[r['setting']]}{carried} | "
                         f"{r['best_epoch']:.1f} | {e['bits_per_byte']:.4f} ± {e['stderr_bits_per_token'] * e['num_tokens'] / e['num_bytes']:.4f} ({kind}) | "
                         f"{r['epochs_trained']:.1f} ({r['epochs']:g}{stop}) | {_flops(r['train_flops'])} | "
                         f"{r['train_seconds'] / 60:.1f} min |")
    lines += ["", "Each twin's best at each size (the gap: diffusion - AR; negative = diffusion wins):", "",
              "| unique tokens | AR best | diffusion best | gap, bits/byte | crossover in the curves | extrapolated |",
              "|---|---|---|---|---|---|"]
    for k in g["sizes"]:
        ar, dm = best_of(state, k, "ar"), best_of(state, k, "diffusion")
        if not (ar and dm):
            continue
        x = state["extrapolation"].get(str(k)) or {}
        fit = x.get("fit") or {}
        if x.get("crossover_flops"):
            seen, guess = f"at {_flops(x['crossover_flops'])} FLOPs", "-"
        elif "flops_needed" in fit:
            seen = "none"
            guess = (f"{_flops(fit['flops_needed'])} FLOPs ({fit['factor']:.1f}x this run, ~{fit['epochs_needed']:.0f} "
                     f"epochs; {fit['slope_bits_per_decade']:+.3f} bits/byte a decade)")
        else:
            seen, guess = "none", ("the curve has stopped improving" if fit else "-")
        lines.append(f"| {d['sizes'][str(k)]['tokens']:,} | {ar['eval']['bits_per_byte']:.4f} ({ar['setting']}) | "
                     f"{dm['eval']['bits_per_byte']:.4f} ({dm['setting']}) | "
                     f"{dm['eval']['bits_per_byte'] - ar['eval']['bits_per_byte']:+.4f} | {seen} | {guess} |")
    trend = state.get("size_trend")
    if trend:
        side = "below" if trend["slope_bits_per_decade"] > 0 else "above"
        closes = (f"; a line through the sizes crosses zero at ~{trend['crosses_zero_at_tokens']:,.0f} unique tokens "
                  f"(diffusion ahead {side} it; an extrapolation)" if "crosses_zero_at_tokens" in trend else "")
        lines += ["", f"Gap of the bests against unique tokens: {trend['slope_bits_per_decade']:+.3f} bits/byte a "
                      f"decade{closes}."]
    lines += ["", "Crossover and extrapolation read the validation curves of training (the same fixed windows for "
                  "both twins; the diffusion model's training objective): the diffusion model's running best against "
                  "the AR twin's lowest point, the fit a line in log10 FLOPs over the last half of its run. A cosine "
                  "schedule ends each run, so the fit is a rough guide, not a forecast."]
    return "\n".join(lines)


def plot_curves(state: dict, path: Path) -> None:
    """One row a size: held-out bits/byte against epochs and against training FLOPs, every run
    (each twin's best setting bold, the others faint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [k for k in state["grid"]["sizes"] if any(r["size"] == k and r["status"] == "done"
                                                      for r in state["runs"].values())]
    if not sizes:
        return
    fig, axes = plt.subplots(len(sizes), 2, figsize=(12, 3.6 * len(sizes)), squeeze=False)
    colour = {"ar": "C0", "diffusion": "C3"}
    for row, k in zip(axes, sizes):
        bests = {twin: best_of(state, k, twin) for twin in TWINS}
        for r in state["runs"].values():
            if r["size"] != k or r["status"] != "done":
                continue
            pts = curve_bits(r, state)
            bold = bests[r["twin"]] is r
            for ax, i in ((row[0], 0), (row[1], 1)):
                ax.plot([p[i] for p in pts], [p[2] for p in pts], color=colour[r["twin"]], lw=2 if bold else 1,
                        alpha=1 if bold else 0.35, marker="o" if bold else None, ms=2,
                        label=f"{r['twin']} {r['setting']}" + (" (best)" if bold else ""))
        if bests["ar"]:  # the AR twin's lowest point: what the diffusion curve has to reach
            low = min(p[2] for p in curve_bits(bests["ar"], state))
            for ax in row:
                ax.axhline(low, color=colour["ar"], ls=":", lw=1)
        tokens = state["data"]["sizes"][str(k)]["tokens"]
        row[0].set_xlabel("epochs")
        row[1].set_xlabel("training FLOPs")
        row[1].set_xscale("log")
        for ax in row:
            ax.set_ylabel("held-out bits/byte")
            ax.set_title(f"{tokens:,} unique tokens", fontsize=10)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.suptitle(f"Scarce data: masked diffusion (training objective) vs its AR twin on held-out text "
                 f"({state['machine']}, {state['updated'][:10]})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gap(state: dict, path: Path) -> None:
    """The diffusion model's running best minus its twin's best against FLOPs, each size, with the
    fitted line carried to zero where it gets there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    drawn = False
    for n, k in enumerate(state["grid"]["sizes"]):
        x = state["extrapolation"].get(str(k))
        dm = best_of(state, k, "diffusion")
        if not x or not dm:
            continue
        low, pts = math.inf, []
        for _, f, b in curve_bits(dm, state):
            low = min(low, b)
            pts.append((f, low - x["target"]))
        tokens = state["data"]["sizes"][str(k)]["tokens"]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=f"C{n}", lw=2, label=f"{tokens:,} tokens")
        fit = x.get("fit")
        if fit:
            end = fit.get("flops_needed", fit["to_flops"])
            xs = np.logspace(np.log10(fit["from_flops"]), np.log10(max(end, fit["to_flops"])), 50)
            ax.plot(xs, fit["intercept"] + fit["slope_bits_per_decade"] * np.log10(xs) - x["target"], color=f"C{n}",
                    ls="--", lw=1)
        drawn = True
    if not drawn:
        plt.close(fig)
        return
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("diffusion training FLOPs")
    ax.set_ylabel("diffusion best so far - AR best, bits/byte")
    ax.set_title("Gap to the AR twin's best (dashed: the fit over the last half, extrapolated)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
