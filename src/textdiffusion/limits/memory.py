"""Memory checked before it is allocated: what a training run or a sampling request implies,
estimated from the config (nothing is allocated: parameters are counted on the meta device),
against what the machine has.

The estimates are deliberately simple (float32 weights, gradients, AdamW's two moments, EMA,
the activations backward keeps, the logits and their softmax) and err on the high side by at
most a small factor: they exist to refuse, in a second and with the estimate in the message,
what would otherwise fail after minutes in the allocator.
"""

from __future__ import annotations

import os

from ..errors import UsageError
from .units import human_bytes, human_count

FLOAT = 4  # bytes per float32


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
    from ..models import parameter_count
    from ..processes.registry import PROCESSES

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
