"""Checkpoints: safetensors weights + optimizer/RNG state, written atomically (a run directory's
``checkpoint/``; ``runs.py`` reads whole run directories).

A run directory holds::

    config.json        the full Config (model, process, data, train)
    tokenizer.json     the tokenizer, so the run needs nothing else to sample or evaluate
    metrics.jsonl      one JSON object per logged step / validation
    checkpoint/        the latest checkpoint, replaced atomically:
        model.safetensors      raw weights            ema.safetensors   EMA weights (if enabled)
        optimizer.safetensors  AdamW moments          rng.safetensors   data/noise/torch RNG states
        state.json             step, tokens seen, optimizer hyper-parameters

A checkpoint is first written to ``checkpoint.tmp/``; the old one is renamed aside and removed
only after the new one is in place, so a crash at any moment leaves a loadable checkpoint.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, first_line


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
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)



def save_checkpoint(run_dir: Path, *, model, ema, optimizer, state: dict, rng: dict[str, torch.Tensor]) -> None:
    """Write a new checkpoint beside the old one, then swap. A write that fails (a full disk, a
    file size limit, a read-only folder) is a CheckpointError naming the folder; the previous
    checkpoint stays in place and the half-written one is removed."""
    run_dir = Path(run_dir)
    tmp, final, old = run_dir / "checkpoint.tmp", run_dir / "checkpoint", run_dir / "checkpoint.old"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_safetensors(tmp / "model.safetensors", model.state_dict())
        if ema is not None:
            write_safetensors(tmp / "ema.safetensors", ema.shadow)
        opt_tensors, opt_meta = _flatten_optimizer(optimizer)
        write_safetensors(tmp / "optimizer.safetensors", opt_tensors)
        write_safetensors(tmp / "rng.safetensors", rng)
        (tmp / "state.json").write_text(json.dumps({**state, "optimizer": opt_meta}, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
    except (OSError, SafetensorError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        then = ("the previous checkpoint is kept: free some space (or fix the folder's permissions) and continue with "
                "--resume") if (final / "state.json").exists() else "free some space and train again"
        raise CheckpointError(f"could not write a checkpoint into {run_dir} ({_reason(exc)}); {then}") from None
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    _fsync_dir(run_dir)
    shutil.rmtree(old, ignore_errors=True)


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
        return load_file(str(path), device=device)
    except PermissionError:
        raise CheckpointError(f"cannot read {path}: permission denied") from None
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


def load_weights(model, ckpt: Path, prefer_ema: bool = True) -> str:
    """Load EMA weights when present (they are what a run is for), else the raw weights."""
    ckpt = Path(ckpt)
    name = "ema.safetensors" if prefer_ema and (ckpt / "ema.safetensors").exists() else "model.safetensors"
    tensors = read_tensors(ckpt / name)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt / name} does not fit this model's config: {first_line(exc)}") from None
    return name
