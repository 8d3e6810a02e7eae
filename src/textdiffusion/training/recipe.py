"""Recipe: config -> tokenizer + token splits -> trained run directory (what ``textdiffusion train`` does).

Pretraining reads text (random windows of packed documents); ``data.sft`` reads prompt/response
pairs (one padded row each, the prompt fixed); ``data.labels`` reads ``{"text", "label"}`` JSONL
(each label's documents packed into windows, conditioned on the label); ``train.init`` starts from another run's weights,
tokenizer, model and process (fine-tuning, e.g. SFT on top of a pretrained model).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from ..config import CONVERTS, Config, ConfigError, ModelConfig, apply_overrides
from ..data import (
    DataError,
    Rows,
    chat_prompt,
    label_windows,
    labelled_documents,
    load_token_splits,
    pair_splits,
    read_pairs,
    sft_rows,
    split_texts,
)
from ..errors import UsageError
from ..limits.memory import check_training_memory
from ..runs import read_run
from ..runs.checkpoint import CheckpointError, checkpoint_dir
from ..tokenizers import Tokenizer, train_tokenizer
from . import distributed
from .trainer import TrainResult, train


def has_checkpoint(run_dir: Path) -> bool:
    try:
        checkpoint_dir(run_dir)
        return True
    except CheckpointError:
        return False


def sft_splits(cfg: Config, tokenizer: Tokenizer) -> dict[str, Rows]:
    """Prompt/response pairs -> padded rows for train and val."""
    pairs = pair_splits(read_pairs(cfg.data.path), cfg.data.val_fraction)
    out = {name: sft_rows(pairs[name], tokenizer, cfg.model.context) for name in ("train", "val")}
    if out["train"].truncated:
        print(f"textdiffusion: {out['train'].truncated} responses cut to fit the context of {cfg.model.context} tokens",
              file=sys.stderr)
    return out


LABELS_FILE = "labels.json"


def label_splits(cfg: Config, tokenizer: Tokenizer, run_dir: Path, docs=None) -> dict[str, Rows]:
    """Labelled documents -> rows for train and val; the label names are saved with the run."""
    docs = docs or labelled_documents(cfg.data.path)
    path = run_dir / LABELS_FILE
    if path.exists():
        names = json.loads(path.read_text())
    else:
        names = sorted({d.label for split in docs.values() for d in split})
        path.write_text(json.dumps(names))
    unknown = {d.label for split in docs.values() for d in split} - set(names)
    if unknown:
        raise DataError(f"labels {sorted(unknown)} are not among the run's labels {names}")
    cfg.model.num_labels = len(names)
    return {name: label_windows(docs[name], names, tokenizer, cfg.model.context) for name in ("train", "val")}


def load_splits(cfg: Config, tokenizer: Tokenizer, run_dir: Path) -> dict:
    if cfg.data.sft:
        return sft_splits(cfg, tokenizer)
    if cfg.data.labels:
        return label_splits(cfg, tokenizer, run_dir)
    return load_token_splits(cfg.data, tokenizer, run_dir / "tokenizer.json")


def finetune_config(cfg: Config, init: str | Path) -> Config:
    """``cfg`` made to fine-tune the run in ``init``: its model, process and (unless SFT) tokenizer
    settings, then validated as a whole again, so a setting that does not fit the init's process
    (``data.fim_rate`` on a diffusion run, ``data.infill_rate`` on the AR twin, ...) is a
    ConfigError naming it, on the Python path as on the command line (it used to pass and end in a
    non-finite loss)."""
    from .adapt import causal_lm_folder, read_init

    init = Path(init)
    context = cfg.model.context if cfg.model.context != ModelConfig().context else None
    init_cfg, _ = read_init(init, context)  # a transformers causal LM: trained on windows of model.context
    if not causal_lm_folder(init):
        checkpoint_dir(init)  # a clear error if it holds no weights
    raw, theirs = cfg.to_dict(), init_cfg.to_dict()
    defaults = Config().to_dict()
    convert = init_cfg.process.name == "ar" and cfg.process.name in CONVERTS
    for section in ("model",) if convert else ("model", "process"):  # set here, not the init's: it would be ignored
        for key, value in raw[section].items():
            if key in ("vocab_size", "num_labels"):
                continue
            if value != defaults[section][key] and value != theirs[section][key]:
                raise ConfigError(f"{section}.{key}={value} cannot change when fine-tuning: --init takes the model "
                                  f"and process of {init} ({section}.{key}={theirs[section][key]}); drop the setting, "
                                  f"or train a new model without --init")
    if convert:  # AR -> diffusion: the AR model's architecture and weights under this config's process
        raw["model"] = dict(theirs["model"], logits_shift=int(cfg.adapt.shift == "on" or (
            cfg.adapt.shift == "auto" and cfg.process.name == "masked")))
    else:
        raw["model"], raw["process"] = theirs["model"], theirs["process"]
    if not cfg.data.sft:
        raw["data"]["tokenizer"], raw["data"]["vocab_size"] = theirs["data"]["tokenizer"], theirs["data"]["vocab_size"]
    raw["train"]["init"] = str(init.resolve())
    return Config.from_dict(raw)


def adopt_init(cfg: Config) -> Tokenizer:
    """Fine-tuning: the tokenizer of the run in ``train.init`` (``finetune_config`` took its model
    and process)."""
    from .adapt import read_init

    _, tokenizer = read_init(Path(cfg.train.init), cfg.model.context)
    return tokenizer


def prepare_data(cfg: Config, run_dir: Path, progress: bool = False) -> tuple[Tokenizer, dict]:
    """Train the tokenizer on the corpus (saved into ``run_dir``) and tokenize every split once."""
    if not cfg.data.path:
        raise ConfigError("no training data: pass --data PATH (a file, folder, JSONL or 'stdlib')")
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.train.init:
        tokenizer = adopt_init(cfg)
        tokenizer.save(run_dir / "tokenizer.json")
        return tokenizer, load_splits(cfg, tokenizer, run_dir)
    if cfg.data.sft and cfg.data.labels:
        raise ConfigError("data.sft and data.labels are two kinds of data: choose one")
    if cfg.data.labels:
        docs = labelled_documents(cfg.data.path)
        tokenizer = train_tokenizer(cfg.data.tokenizer, [d.text for d in docs["train"] + docs["val"]],
                                    cfg.data.vocab_size)
        tokenizer.save(run_dir / "tokenizer.json")
        return tokenizer, label_splits(cfg, tokenizer, run_dir, docs)
    if cfg.data.sft:
        pairs = read_pairs(cfg.data.path)
        tokenizer = train_tokenizer(cfg.data.tokenizer, [chat_prompt(p.prompt) + p.response for p in pairs],
                                    cfg.data.vocab_size)
        tokenizer.save(run_dir / "tokenizer.json")
        return tokenizer, sft_splits(cfg, tokenizer)
    # streamed, twice (tokenizer, then ids): characters from the whole corpus (so validation has
    # no unknowns), BPE merges from train only; the byte tokenizer needs no pass
    train_text = [False]

    def corpus():
        for split, text in split_texts(cfg.data):
            if split == "train":
                train_text[0] = train_text[0] or bool(text.strip())
            if split == "train" or cfg.data.tokenizer == "char":
                yield text

    tokenizer = train_tokenizer(cfg.data.tokenizer, corpus(), cfg.data.vocab_size)
    if cfg.data.tokenizer == "byte":
        train_text[0] = any(t.strip() for s, t in split_texts(cfg.data) if s == "train")
    if not train_text[0]:
        raise ConfigError(f"the training split of {cfg.data.path} is empty")
    tokenizer.save(run_dir / "tokenizer.json")
    return tokenizer, load_token_splits(cfg.data, tokenizer, run_dir / "tokenizer.json", progress=progress)


RUN_FILES = ("config.json", "tokenizer.json", "metrics.jsonl", "labels.json", "checkpoint.tmp", "tensorboard")


def stopped_before_first_checkpoint(run_dir: Path) -> bool:
    """A run killed before its first checkpoint: its config.json (written first) and nothing but
    the files a run writes, so starting it again over them loses nobody's work."""
    if not (run_dir / "config.json").is_file() or has_checkpoint(run_dir):
        return False
    if any(p.name not in RUN_FILES and not _our_temporary(p) for p in run_dir.iterdir()):
        return False
    try:
        cfg = Config.load(run_dir / "config.json")
    except (ValueError, TypeError):
        return False
    return not _logged_past(run_dir, cfg.train.ckpt_every)


def _saved_ckpt_every(run_dir: Path) -> int:
    try:
        return Config.load(run_dir / "config.json").train.ckpt_every
    except (ValueError, TypeError, OSError):
        return 1 << 62  # unreadable: read_run names the problem


def _our_temporary(path: Path) -> bool:
    """A file a write_atomic cut short left (``.config.json.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp") and path.name[1:-4] in RUN_FILES


def _logged_past(run_dir: Path, ckpt_every: int) -> bool:
    """metrics.jsonl reaches a step that was checkpointed: the checkpoint was there and is gone
    (deleted by hand), so starting again would throw that training away."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return False
    steps = []
    for line in lines:
        try:
            steps.append(int(json.loads(line).get("step", 0)))
        except (ValueError, TypeError, AttributeError):
            continue
    return any(step >= ckpt_every for step in steps)


def check_new_run_dir(run_dir: Path) -> None:
    """A new run goes into a new or empty folder: never over files someone owns (a run writes
    config.json, tokenizer.json and metrics.jsonl there)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} is a file: give a folder for the run")
    if stopped_before_first_checkpoint(run_dir):
        raise UsageError(f"--out {run_dir} holds a run that stopped before its first checkpoint: start it again "
                         f"with --resume, or choose a new folder")
    if run_dir.is_dir():
        held = sorted(p.name for p in run_dir.iterdir() if not _our_temporary(p))
        if held:
            shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            raise UsageError(f"--out {run_dir} is not empty and holds no run ({shown}): choose a new folder, "
                             f"or empty this one")


def train_run(cfg: Config, run_dir: str | Path, *, progress: bool = True) -> TrainResult:
    """Train a new run. Under torchrun, rank 0 checks the folder, trains the tokenizer and
    tokenizes the corpus while the others wait; they then read what it wrote and all train."""
    run_dir = Path(run_dir)
    return _led(distributed.join(cfg.train), run_dir, progress, lambda world: _lead(cfg, run_dir, world, progress))


def _led(world, run_dir: Path, progress: bool, lead) -> TrainResult:
    """Rank 0 runs ``lead`` (which tells the others once the run folder, config, tokenizer and
    token cache are written, or tells them the error that stopped it); the others wait, then read
    the run and train (resuming when rank 0 left a checkpoint to resume from)."""
    world.told = False
    if not world.main:
        world.listen()
        cfg, tokenizer = read_run(run_dir)
        return train(cfg, run_dir, load_splits(cfg, tokenizer, run_dir), tokenizer, progress=progress, world=world,
                     resume=has_checkpoint(run_dir))
    try:
        return lead(world)
    except BaseException as exc:
        if not world.told:
            world.tell(exc)
        raise


def _lead(cfg: Config, run_dir: Path, world, progress: bool) -> TrainResult:
    if has_checkpoint(run_dir):
        raise CheckpointError(f"{run_dir} already holds a trained run: continue it with --resume or choose another --out")
    check_new_run_dir(run_dir)
    if cfg.data.path and cfg.data.path != "stdlib":
        cfg.data.path = str(Path(cfg.data.path).resolve())  # the run can be resumed from anywhere
    if cfg.train.init:
        cfg = finetune_config(cfg, cfg.train.init)
    if cfg.train.device in ("cpu", "auto"):  # the size before the corpus is read, in host memory (on a
        # GPU, and with the tokenizer's exact size, train() checks again before allocating)
        from ..runtime import resolve_device

        if resolve_device(cfg.train.device).type == "cpu":
            check_training_memory(cfg, cfg.data.vocab_size if cfg.data.tokenizer == "bpe" else 260)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")  # first: a run killed from here on is resumed (from step 0 if need be)
        return _train_from_scratch(cfg, run_dir, progress)
    except BaseException:
        if not has_checkpoint(run_dir):  # failed before the first checkpoint: leave what was there (nothing)
            if created:
                shutil.rmtree(run_dir, ignore_errors=True)
            else:  # an empty folder given as --out: empty again
                for p in run_dir.iterdir():
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
        raise


def _train_from_scratch(cfg: Config, run_dir: Path, progress: bool) -> TrainResult:
    world = distributed.current()
    tokenizer, splits = prepare_data(cfg, run_dir, progress)
    if world.distributed:  # the others read the config, tokenizer and token cache written here
        cfg.save(run_dir / "config.json")
        tokenizer.save(run_dir / "tokenizer.json")
        world.tell(None)
    return train(cfg, run_dir, splits, tokenizer, progress=progress, world=world)


RESUMABLE_SECTIONS = ("train",)


def resume_run(run_dir: str | Path, overrides: list[str] | None = None, *, progress: bool = True) -> TrainResult:
    """Continue a run from its last checkpoint; only ``train.*`` settings may change. Under
    torchrun, rank 0 checks the run and saves its config; the others wait, then all resume."""
    run_dir = Path(run_dir)
    return _led(distributed.join(_saved_train_config(run_dir)), run_dir, progress,
                lambda world: _resume_lead(run_dir, overrides, progress, world))


def _saved_train_config(run_dir: Path):
    """The saved run's train section (torchrun's backend and timeout come from it), or the defaults."""
    try:
        return Config.load(run_dir / "config.json").train
    except (ValueError, TypeError, OSError):
        return Config().train  # read_run on rank 0 names the problem


def _resume_lead(run_dir: Path, overrides, progress: bool, world) -> TrainResult:
    if (run_dir / "config.json").is_file() and not has_checkpoint(run_dir) and _logged_past(
            run_dir, _saved_ckpt_every(run_dir)):
        raise CheckpointError(f"{run_dir} has no checkpoint, but its metrics.jsonl goes past a checkpointed step "
                              f"(was checkpoint/ deleted?): nothing to resume from; train a new run with another --out")
    if stopped_before_first_checkpoint(run_dir):
        # stopped (killed) before its first checkpoint: nothing to lose, start it over from its saved config
        cfg = Config.load(run_dir / "config.json")
        raw = cfg.to_dict()
        apply_overrides(raw, overrides or [], sections=RESUMABLE_SECTIONS)
        cfg = Config.from_dict(raw)
        print(f"textdiffusion: {run_dir} stopped before its first checkpoint: starting it again from step 0",
              file=sys.stderr)
        return _train_from_scratch(cfg, run_dir, progress)
    cfg, tokenizer = read_run(run_dir)
    checkpoint_dir(run_dir)  # a clear error if there is nothing to resume
    raw = cfg.to_dict()
    apply_overrides(raw, overrides or [], sections=RESUMABLE_SECTIONS)
    cfg = Config.from_dict(raw)
    cfg.save(run_dir / "config.json")  # the run's config says what it now trains with
    splits = load_splits(cfg, tokenizer, run_dir)
    world.tell(None)
    return train(cfg, run_dir, splits, tokenizer, resume=True, progress=progress, world=world)

