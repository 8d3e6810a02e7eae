"""Sizes checked before they are allocated: the memory a training run or a sampling request
implies, estimated from the config (nothing is allocated: parameters are counted on the meta
device), against what the machine has; and the
time a sampling request implies, projected from its first step.

The estimates are deliberately simple (float32 weights, gradients, AdamW's two moments, EMA,
the activations backward keeps, the logits and their softmax) and err on the high side by at
most a small factor: they exist to refuse, in a second and with the estimate in the message,
what would otherwise fail after minutes in the allocator or run for days.
"""

from __future__ import annotations

import contextlib
import os
from contextvars import ContextVar

from .errors import UsageError

FLOAT = 4  # bytes per float32
MAX_STEPS = 1_000_000  # sampling steps: no sampler here has use for more
DEFAULT_MAX_SECONDS = 3600.0  # the command line's --max-seconds for one sampling request

_max_seconds: ContextVar[float | None] = ContextVar("max_seconds", default=None)


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Within this block, every sampler refuses (after its first step) a request projected to take
    longer than ``seconds`` (None: no limit, the Python API's default)."""
    token = _max_seconds.set(seconds)
    try:
        yield
    finally:
        _max_seconds.reset(token)


def max_seconds() -> float | None:
    return _max_seconds.get()


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def human_count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:,.1f}{unit}"
    return f"{n:.0f}"


def human_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} minutes"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} hours"
    return f"{s / 86400:.1f} days"


def available_memory(device=None) -> int | None:
    """Bytes this process can still allocate on ``device`` (CPU: the kernel's MemAvailable;
    CUDA: the free device memory); None when the platform does not say."""
    if device is not None and getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None


def _activations_per_token(model_cfg, vocab_size: int, training: bool) -> float:
    """Bytes per token of the activations one forward keeps (training: what backward needs;
    sampling: the widest layer and the logits with their softmax)."""
    d, r, n = model_cfg.d_model, model_cfg.mlp_ratio, model_cfg.n_layer
    # norms, q/k/v, attention out, MLP (pre/post GELU); no attention scores: SDPA's fused kernels
    # never store the (T, T) matrix (measured: context 8192 trains in ~1 GB where it would add 30)
    layer = (8 + 2 * r) * d
    logits = 3 * vocab_size  # logits, log-softmax, its gradient (or the sampler's probabilities)
    if training:
        return FLOAT * (n * layer + logits)
    return FLOAT * (2 * layer + logits + 2 * n * d)  # + keys/values of every layer (cached samplers)


def training_memory(cfg, vocab_size: int) -> dict[str, int]:
    """Estimated peak bytes of a training run, by part."""
    from .models import parameter_count
    from .processes.registry import PROCESSES

    tc, L = cfg.train, cfg.model.context
    spec = PROCESSES.get(cfg.process.name)  # (an unknown name is refused where the run is built)
    embed_dim = cfg.process.embed_dim if spec is not None and spec.backbone == "embedding" else None
    params = parameter_count(cfg.model, vocab_size, embed_dim, cfg.process.self_cond)
    copies = 4 + (1 if tc.ema > 0 else 0)  # weights, gradients, two AdamW moments, EMA
    return {
        "weights and optimizer state": params * FLOAT * copies,
        "activations": int(tc.batch_size * L * _activations_per_token(cfg.model, vocab_size, True)),
        "validation batches": tc.eval_batches * tc.batch_size * L * 8 * 2,  # int64 tokens (+ masks of SFT rows)
        "_params": params,
    }


def check_training_memory(cfg, vocab_size: int, device=None) -> None:
    """Refuse a run whose estimated memory exceeds what the machine has, naming the biggest part
    and the settings that size it."""
    parts = training_memory(cfg, vocab_size)
    params = parts.pop("_params")
    total = sum(parts.values())
    have = available_memory(device)
    if have is None or total <= have:
        return
    worst = max(parts, key=parts.get)
    knobs = {"weights and optimizer state": "model.n_layer, model.d_model or data.vocab_size",
             "activations": "train.batch_size (train.grad_accum keeps the tokens per step), model.context or "
                            "model.n_layer",
             "validation batches": "train.eval_batches"}[worst]
    raise UsageError(f"this run needs about {human_bytes(total)} of memory ({human_count(params)} parameters; "
                     f"{worst}: {human_bytes(parts[worst])}) and this machine has {human_bytes(have)} available: "
                     f"lower {knobs}")


def check_sampling_memory(model, rows: int, length: int) -> None:
    """Refuse a sampling request (``rows`` sequences of ``length`` tokens) whose activations do
    not fit, before the canvas is made."""
    cfg = model.cfg
    need = rows * length * _activations_per_token(cfg, cfg.vocab_size, False)
    device = next(model.parameters()).device
    have = available_memory(device)
    if have is not None and need > have:
        raise UsageError(f"{rows:,} samples of {length:,} tokens need about {human_bytes(need)} of memory and this "
                         f"machine has {human_bytes(have)} available: ask for fewer samples (--num) or a shorter "
                         f"--length")


def check_steps(steps) -> None:
    if steps is not None and steps > MAX_STEPS:
        raise UsageError(f"steps={steps:,} is more than {MAX_STEPS:,}: no sampler has use for that many (each step is "
                         f"a pass of the network); lower --steps")


def check_projected_time(seconds_per_step: float, steps_left: int, max_seconds: float | None, done: int = 1) -> None:
    """After ``done`` steps: refuse a request whose remaining steps would take longer than
    ``max_seconds`` at the speed of the last step."""
    if max_seconds is None or steps_left <= 0:
        return
    projected = seconds_per_step * steps_left
    if projected > max_seconds:
        raise UsageError(f"{steps_left + done:,} steps would take about {human_seconds(projected + seconds_per_step * done)} "
                         f"here (a step takes {seconds_per_step * 1000:,.0f} ms); lower --steps or --num, or raise "
                         f"--max-seconds (now {max_seconds:g})")
