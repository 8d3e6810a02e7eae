"""Checkpoints: safetensors weights + optimizer/RNG state, written atomically (a run directory's
``checkpoint/``; ``runs/__init__.py`` reads whole run directories).

A run directory holds::

    config.json        the full Config (model, process, data, train)
    tokenizer.json     the tokenizer, so the run needs nothing else to sample or evaluate
    metrics.jsonl      one JSON object per logged step / validation
    checkpoint/        the latest checkpoint, replaced atomically:
        model.safetensors      raw weights            ema.safetensors   EMA weights (if enabled)
        optimizer.safetensors  AdamW moments          rng.safetensors   data/noise/torch RNG states
        state.json             step, tokens seen, best validation so far, optimizer hyper-parameters
    best/              the weights of the lowest validation loss so far (train.keep_best): a saved
                       model of its own (config.json, tokenizer.json, checkpoint/ with the
                       validated weights, EMA when enabled, and state.json's step and val_loss),
                       so every command reads it as ``RUN/best`` or ``RUN --checkpoint best``

A run trained with ``train.distributed = "fsdp"`` keeps its weights, EMA and optimizer state
sharded instead: ``checkpoint/sharded/`` is a torch.distributed.checkpoint (DCP) written by every
process in safetensors files (DCP's Hugging Face storage: no pickled metadata), beside the same
state.json and rng.safetensors. DCP reshards on load, so such a run resumes at any number of
processes, and every command that reads weights (generate, eval, --init, export) reads it
whole in one process; ``textdiffusion export`` writes it out as an ordinary model.

A checkpoint is first written to ``checkpoint.tmp/``; the old one is renamed aside and removed
only after the new one is in place, so a crash at any moment leaves a loadable checkpoint.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, first_line
from ..fileio import umask_mode


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - not all platforms can open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors file with the permissions of any other file written here: safetensors itself
    creates them readable by the owner only (0600), which locks other users out of a shared model."""
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    umask_mode(path)



def save_checkpoint(run_dir: Path, *, model, ema, optimizer, state: dict, rng: dict[str, torch.Tensor]) -> None:
    """Write a new checkpoint beside the old one, then swap. A write that fails (a full disk, a
    file size limit, a read-only folder) is a CheckpointError naming the folder; the previous
    checkpoint stays in place and the half-written one is removed."""
    run_dir = Path(run_dir)
    tmp = run_dir / "checkpoint.tmp"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_safetensors(tmp / "model.safetensors", model.state_dict())
        if ema is not None:
            write_safetensors(tmp / "ema.safetensors", ema.shadow)
        opt_tensors, opt_meta = _flatten_optimizer(optimizer)
        write_safetensors(tmp / "optimizer.safetensors", opt_tensors)
        _write_rest(tmp, state, rng, opt_meta)
        _fsync_tree(tmp)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(run_dir, run_dir, exc) from None
    _swap_in(run_dir, tmp)


def _write_failed(run_dir: Path, folder: Path, exc: BaseException) -> CheckpointError:
    """A checkpoint write into ``folder`` that failed, as one line: the reason and what to do."""
    then = ("the previous checkpoint is kept: free some space (or fix the folder's permissions) and continue with "
            "--resume") if (run_dir / "checkpoint" / "state.json").exists() else "free some space and train again"
    return CheckpointError(f"could not write a checkpoint into {folder} ({_reason(exc)}); {then}")


def save_best(run_dir: Path, weights: dict[str, torch.Tensor], state: dict) -> None:
    """Replace ``run_dir/best`` with ``weights`` (what validation scored) and ``state`` (step,
    val_loss), beside a copy of the run's config, tokenizer and labels: a model folder of its
    own. Written aside and swapped in like a checkpoint; a failed write keeps the previous best."""
    run_dir = Path(run_dir)
    tmp, final = run_dir / "best.tmp", run_dir / "best"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "checkpoint").mkdir(parents=True)
        for name in ("config.json", "tokenizer.json", "labels.json"):
            if (run_dir / name).exists():
                shutil.copyfile(run_dir / name, tmp / name)
        write_safetensors(tmp / "checkpoint" / "model.safetensors", weights)
        (tmp / "checkpoint" / "state.json").write_text(json.dumps({**state, "inference_only": True, "best": True}))
        _fsync_tree(tmp)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(run_dir, final, exc) from None  # (the previous best stays in place)
    _swap_in(run_dir, tmp, "best")


def best_dir(run_dir: Path) -> Path:
    """``run_dir/best`` (``best.old`` if a save was cut off mid-swap), or a CheckpointError saying why not."""
    for name in ("best", "best.old"):
        d = Path(run_dir) / name
        if (d / "checkpoint" / "state.json").exists():
            return d
    raise CheckpointError(f"{run_dir} has no best checkpoint: it is written at each validation that improves "
                          f"(train.keep_best, every train.eval_every steps); use --checkpoint last")


def _write_rest(tmp: Path, state: dict, rng: dict[str, torch.Tensor], opt_meta) -> None:
    write_safetensors(tmp / "rng.safetensors", rng)
    (tmp / "state.json").write_text(json.dumps({**state, "optimizer": opt_meta}, indent=2))


def _fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
    for d in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        _fsync_dir(d)


def _swap_in(run_dir: Path, tmp: Path, name: str = "checkpoint") -> None:
    """``tmp`` becomes ``run_dir/name``; the previous one is renamed to ``name.old`` first and
    removed last, so a crash at any moment leaves one of them complete."""
    final, old = run_dir / name, run_dir / f"{name}.old"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    _fsync_dir(run_dir)
    shutil.rmtree(old, ignore_errors=True)


SHARDED = "sharded"  # the DCP folder of an FSDP run's checkpoint


def is_sharded_checkpoint(ckpt: Path) -> bool:
    return (Path(ckpt) / SHARDED).is_dir()


def _dcp_state(model, ema, optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a sharded checkpoint (``model.*``, ``ema.*``, ``optim.*``: DTensor shards
    under FSDP, whole tensors in one process) and the optimizer's flat state dict they came from."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    msd, osd = get_state_dict(model, optimizer, options=StateDictOptions(flatten_optimizer_state_dict=True))
    tensors = {f"model.{k}": v for k, v in msd.items()}
    tensors.update({f"optim.{k}": v for k, v in osd.items() if torch.is_tensor(v)})
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.shadow.items()})
    return tensors, osd


def save_sharded(run_dir: Path, *, model, ema, optimizer, state: dict, rng: dict[str, torch.Tensor], world) -> None:
    """Every process writes its shards (a collective: all processes call it); rank 0 writes the
    rest and swaps the checkpoint in, as ``save_checkpoint`` does."""
    import torch.distributed.checkpoint as dcp

    run_dir = Path(run_dir)
    tmp = run_dir / "checkpoint.tmp"
    if world.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    world.barrier()
    tensors, osd = _dcp_state(model, ema, optimizer)
    try:
        writer = dcp.HuggingFaceStorageWriter(str(tmp / SHARDED), save_distributed=world.distributed)
        with warnings.catch_warnings():  # one process: "assuming the intent is to save in a single process"
            warnings.simplefilter("ignore", UserWarning)
            dcp.save(tensors, storage_writer=writer, no_dist=not world.distributed)
        if world.main:
            meta = {k: v for k, v in osd.items() if not torch.is_tensor(v)}
            _write_rest(tmp, {**state, "sharded": True, "world_size": world.size}, rng, meta)
            _fsync_tree(tmp)
    except (OSError, SafetensorError, RuntimeError) as exc:
        if world.main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write a sharded checkpoint into {run_dir} ({_reason(exc)[:200]}); the "
                              f"previous checkpoint is kept: free some space and continue with --resume") from None
    world.barrier()
    if world.main:
        _swap_in(run_dir, tmp)


def _dcp_load(tensors: dict[str, torch.Tensor], ckpt: Path) -> None:
    """Fill ``tensors`` in place from a sharded checkpoint (resharded to this run's processes)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    whole = not (dist.is_available() and dist.is_initialized()) or not any(hasattr(v, "to_local") for v in tensors.values())
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(tensors, storage_reader=dcp.HuggingFaceStorageReader(str(Path(ckpt) / SHARDED)), no_dist=whole)
    except Exception as exc:  # DCP wraps every failure (a missing key, a bad file) in its CheckpointException
        raise CheckpointError(f"the sharded checkpoint {Path(ckpt) / SHARDED} does not fit this run or is damaged "
                              f"({first_line(exc)[:200]})") from None


def _sharded_keys(ckpt: Path) -> set[str]:
    import torch.distributed.checkpoint as dcp

    try:
        return set(dcp.HuggingFaceStorageReader(str(Path(ckpt) / SHARDED)).read_metadata().state_dict_metadata)
    except Exception as exc:
        raise CheckpointError(f"corrupt sharded checkpoint {Path(ckpt) / SHARDED}: {first_line(exc)[:200]}") from None


def load_sharded(ckpt: Path, model, ema, optimizer) -> None:
    """Weights, EMA and optimizer state of a sharded checkpoint into this run (sharded by FSDP
    over any number of processes, or whole in one)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    if not is_sharded_checkpoint(ckpt):
        raise CheckpointError(f"{ckpt} was saved by one process or by DDP, and this run shards its model (FSDP): "
                              f"resume it with --set train.distributed=ddp")
    keys = _sharded_keys(ckpt)
    if ema is not None and not any(k.startswith("ema.") for k in keys):
        raise CheckpointError(f"{ckpt} has no EMA weights but train.ema > 0")
    tensors, osd = _dcp_state(model, ema, optimizer)
    _dcp_load(tensors, ckpt)
    optim = {k: v for k, v in osd.items() if not torch.is_tensor(v)}
    optim.update({k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")})
    set_state_dict(model, optimizer, model_state_dict={k[len("model."):]: v for k, v in tensors.items()
                                                       if k.startswith("model.")},
                   optim_state_dict=optim, options=StateDictOptions(flatten_optimizer_state_dict=True))


def _load_sharded_weights(model, ckpt: Path, prefer_ema: bool) -> str:
    keys = _sharded_keys(ckpt)
    prefix = "ema." if prefer_ema and any(k.startswith("ema.") for k in keys) else "model."
    state = model.state_dict()
    tensors = {prefix + k: v for k, v in state.items()}
    missing = sorted(set(tensors) - keys)
    if missing:
        raise CheckpointError(f"the sharded checkpoint {Path(ckpt) / SHARDED} does not fit this model's config "
                              f"(no {missing[0]})")
    _dcp_load(tensors, ckpt)
    check_finite(tensors, Path(ckpt) / SHARDED)
    model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()})
    return f"{SHARDED} ({prefix.rstrip('.')})"


def _reason(exc: BaseException) -> str:
    """An OS or safetensors error as a few words ("No space left on device")."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = first_line(exc)
    found = re.search(r"I/O error: (.*?)(?: \(os error \d+\))?$", text)  # safetensors wraps the OS error
    return found.group(1) if found else text


def checkpoint_dir(run_dir: Path) -> Path:
    """The newest complete checkpoint (``checkpoint.old`` if a save was cut off mid-swap)."""
    for name in ("checkpoint", "checkpoint.old"):
        d = Path(run_dir) / name
        if (d / "state.json").exists():
            return d
    raise CheckpointError(f"{run_dir} has no checkpoint (is it a textdiffusion run directory?)")


def _flatten_optimizer(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            tensors[f"{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": sd["param_groups"]}


def read_tensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file, with a one-line CheckpointError that says what is wrong
    with it: missing, unreadable, or not a (complete) safetensors file. Never unpickled."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path.parent} has no {path.name} (an incomplete or foreign checkpoint)")
    try:
        with open(path, "rb"):  # safetensors reports a file it may not read as "No such file or directory"
            pass
    except PermissionError:
        raise CheckpointError(f"cannot read {path}: permission denied (make it readable: chmod a+r, or run as "
                              f"its owner)") from None
    except OSError:
        pass  # (a folder, say: load_file names it below)
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"corrupt checkpoint file {path}: {first_line(exc)}") from None


def read_state(ckpt: Path) -> dict:
    """A checkpoint's state.json (step, tokens seen, optimizer hyper-parameters)."""
    path = Path(ckpt) / "state.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except PermissionError:
        raise CheckpointError(f"cannot read {path}: permission denied") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"corrupt checkpoint file {path}: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"corrupt checkpoint file {path}: expected a JSON object")
    return state


def load_optimizer_state(optimizer, ckpt: Path, meta: dict) -> None:
    """AdamW's moments, checked against the parameters they are for (another run's optimizer
    state would otherwise fail steps later, inside torch)."""
    path = Path(ckpt) / "optimizer.safetensors"
    tensors = read_tensors(path)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    try:
        groups = meta["param_groups"]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
            raise ValueError("another number of parameters")
        for name, value in tensors.items():
            idx, key = name.split(".", 1)
            i = int(idx)
            if key in ("exp_avg", "exp_avg_sq") and tuple(value.shape) != tuple(params[i].shape):
                raise ValueError(f"{name} has shape {tuple(value.shape)}, the parameter {tuple(params[i].shape)}")
            state.setdefault(i, {})[key] = value
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} does not fit this model ({exc}): is it another run's checkpoint?") from None


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights that hold NaN or inf (a diverged run, a damaged or overflowed file) where
    they are read, in one pass over them: sampling from them failed deep inside torch
    ("probability tensor contains either inf, nan"), and training from them diverges at once."""
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"the weights in {path} hold NaN or inf values (first in {name}): the run diverged or "
                                  f"the file is damaged; retrain from an earlier checkpoint, or from scratch with a "
                                  f"lower train.lr (--set train.lr=...)")


def load_weights(model, ckpt: Path, prefer_ema: bool = True) -> str:
    """Load EMA weights when present (they are what a run is for), else the raw weights; weights
    holding NaN or inf are a CheckpointError (``check_finite``)."""
    ckpt = Path(ckpt)
    if is_sharded_checkpoint(ckpt):  # an FSDP run's: read whole, in this process
        return _load_sharded_weights(model, ckpt, prefer_ema)
    name = "ema.safetensors" if prefer_ema and (ckpt / "ema.safetensors").exists() else "model.safetensors"
    tensors = read_tensors(ckpt / name)
    check_finite(tensors, ckpt / name)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt / name} does not fit this model's config: {first_line(exc)}") from None
    return name
