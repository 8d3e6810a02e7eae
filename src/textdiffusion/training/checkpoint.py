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
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError


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
    run_dir = Path(run_dir)
    tmp, final, old = run_dir / "checkpoint.tmp", run_dir / "checkpoint", run_dir / "checkpoint.old"
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
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    _fsync_dir(run_dir)
    shutil.rmtree(old, ignore_errors=True)


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


def load_optimizer_state(optimizer, ckpt: Path, meta: dict) -> None:
    tensors = load_file(str(ckpt / "optimizer.safetensors"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def load_weights(model, ckpt: Path, prefer_ema: bool = True) -> str:
    """Load EMA weights when present (they are what a run is for), else the raw weights."""
    name = "ema.safetensors" if prefer_ema and (ckpt / "ema.safetensors").exists() else "model.safetensors"
    try:
        tensors = load_file(str(ckpt / name))
        model.load_state_dict(tensors)
    except (SafetensorError, OSError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"corrupt checkpoint {ckpt / name}: {first}") from None
    return name
