"""Model FLOPs utilisation: the training FLOPs a step needs (6N plus attention, per token) over
what the device could do in that time.

The peak is the datasheet's dense bf16 tensor-core rate for the GPUs named below (no sparsity),
else measured at the start of training with a few square matmuls in the training precision
(the CPU always, since no datasheet knows its cores, threads and vector units). ``train.peak_flops``
overrides both."""

from __future__ import annotations

import functools
import time

import torch

# dense bf16 FLOP/s per GPU, from the vendors' datasheets; the first name that occurs in
# torch.cuda.get_device_name() wins, so the more specific names come first
DATASHEET_BF16: tuple[tuple[str, float], ...] = (
    ("GB200", 2.5e15), ("B200", 2.25e15), ("B100", 1.75e15),
    ("H200", 989e12), ("GH200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12),
    ("H800", 989e12), ("H20", 148e12),
    ("A100", 312e12), ("A800", 312e12), ("A30", 165e12), ("A10G", 70e12), ("A10", 125e12),
    ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("RTX 6000 Ada", 364e12), ("RTX A6000", 155e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12),
    ("MI300X", 1307e12), ("MI250X", 383e12),
)


def datasheet_peak(name: str) -> float | None:
    """The dense bf16 peak of a GPU by its name (``torch.cuda.get_device_name()``), or None."""
    for key, flops in DATASHEET_BF16:
        if key.lower() in name.lower():
            return flops
    return None


@functools.lru_cache(maxsize=8)
def measured_peak(device: torch.device, dtype: torch.dtype = torch.float32, sizes=(512, 1024), reps: int = 3) -> float:
    """The best rate of a few square matmuls on ``device`` in ``dtype`` (about 0.1 s on a CPU;
    once per process)."""
    best = 0.0
    gen = torch.Generator(device=device).manual_seed(0)  # its own: the training RNG streams stay untouched
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
        a @ b  # warm-up (kernel choice, allocation)
        for _ in range(reps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = max(best, 2 * n**3 / max(time.perf_counter() - t, 1e-9))
    return best


def device_peak(device: torch.device, bf16: bool, override: float = 0.0) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    if override > 0:
        return override, "train.peak_flops"
    if device.type == "cuda" and bf16:
        name = torch.cuda.get_device_name(device)
        found = datasheet_peak(name)
        if found:
            return found, f"{name} datasheet, dense bf16"
    dtype = torch.bfloat16 if bf16 else torch.float32
    return measured_peak(device, dtype), f"measured {str(dtype).replace('torch.', '')} matmuls on {device.type}"


def flops_per_token(model, process, context: int) -> float | None:
    """Training FLOPs per scored token of a window: the network's, once per position it reads
    (block diffusion reads the noisy and the clean copy of each window: twice)."""
    per = getattr(model, "flops_per_token", None)
    if per is None:
        return None
    copies = 2 if getattr(process, "block_size", None) else 1
    return copies * per(copies * context)


def mfu(tokens_per_second: float, per_token: float | None, peak: float, devices: int = 1) -> float | None:
    """Utilisation of ``devices`` devices of ``peak`` FLOP/s each."""
    if not per_token or peak <= 0:
        return None
    return tokens_per_second * per_token / (peak * devices)
