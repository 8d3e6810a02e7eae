"""How many CPU threads torch gets (no torch import here until it is set).

torch's default is one thread per core. On a machine where other work already runs, that
oversubscribes the cores: on a busy 2-core machine two threads made batch-1 generation several
times slower than one. ``auto_threads`` takes the cores this process may run on minus the
machine's load (the 1-minute load average, rounded), at least one.
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def auto_threads(cores: int | None = None, load: float | None = None) -> int:
    """The cores not already busy: ``cores`` minus the rounded load average, between 1 and ``cores``."""
    cores = usable_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # pragma: no cover - no load average here
            load = 0.0
    return max(1, min(cores, cores - int(load + 0.5)))


def api_threads(threads: int | None) -> int:
    """The Python API's thread count (``Pipeline.from_pretrained(threads=)``): ``threads`` if given
    (0: ``auto_threads()``); None: the load-aware default the command line uses, unless the caller
    chose already through OMP_NUM_THREADS (then torch keeps what it has). Sets and returns it."""
    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        import torch

        return torch.get_num_threads()
    return set_threads(threads or 0)


def set_threads(threads: int = 0) -> int:
    """Give torch ``threads`` CPU threads (0: ``auto_threads()``); returns the number set."""
    import torch

    n = threads or auto_threads()
    torch.set_num_threads(n)
    return n


def resolve_device(name: str, world=None):
    """The torch device ``name`` asks for ("auto": a GPU if there is one; cpu, cuda, cuda:N), in
    one line if it is unknown or absent; under torchrun (``world``, training/distributed.py) this
    process's own."""
    import torch

    from .errors import UsageError

    if world is not None and world.distributed:  # torchrun: this process's GPU (LOCAL_RANK), or the CPU
        return world._device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name} asked for, but CUDA is not available here")
    return device
