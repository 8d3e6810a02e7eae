"""Several processes, one run: what ``torchrun`` hands each process, the process group, and the
few collectives the training loop needs.

``torchrun --nproc_per_node N -m textdiffusion train ...`` starts N copies of the command with
``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` (and the rendezvous address) in their environment; this
module joins them into one process group (gloo on the CPU, NCCL on CUDA). Without those
variables a run is one process and none of this does anything.

How the processes divide the work, so that N of them compute what one computes:
* ``train.batch_size`` is the batch of the whole run: each process takes rows
  ``share(batch_size)`` of it. Every process draws the whole batch's windows and noise from the same
  seeded generators and keeps its own rows (``WindowSampler(rows=)``, ``RowShard``), so the shares
  are disjoint and together are exactly the one-process batch, at any number of processes.
* Each process's loss is weighted by its scored tokens over the whole batch's (``sum``), and
  DDP/FSDP average the gradients, so the step is the one-process step (to float rounding).
* Rank 0 alone writes the progress bar, metrics and (DDP) checkpoints; every process agrees on
  when to stop (``any``).
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass, field

import torch

from ..errors import TrainingError, UsageError, first_line

MODES = ("ddp", "fsdp")


class PeerLost(TrainingError):
    """Another process of the run stopped (killed, crashed, or out of reach)."""


@dataclass
class World:
    """This process's place in the run: ``rank`` of ``size`` processes (``local_rank`` on its machine)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    _device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _slow: object = None  # a gloo group with a long timeout: waiting for rank 0 to prepare the data
    told: bool = False  # rank 0 has told the others (``tell``)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, batch: int) -> tuple[int, int]:
        """Rows [start, stop) of a batch of ``batch`` rows that this process trains on."""
        if batch % self.size:
            raise UsageError(f"train.batch_size={batch} does not split into {self.size} processes: use a multiple "
                             f"of {self.size} (the batch is the whole run's; each process takes batch_size / {self.size})")
        n = batch // self.size
        return self.rank * n, (self.rank + 1) * n

    # collectives ------------------------------------------------------------------------------
    def sum(self, *values: float) -> list[float]:
        """Each value summed over every process (float64)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._device)
        self._call(torch.distributed.all_reduce, t)
        return t.tolist()

    def any(self, *flags: bool) -> list[bool]:
        """Each flag: true in some process."""
        if not self.distributed:
            return [bool(f) for f in flags]
        t = torch.tensor([float(f) for f in flags], dtype=torch.float64, device=self._device)
        self._call(torch.distributed.all_reduce, t, op=torch.distributed.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def barrier(self) -> None:
        if self.distributed:
            self._call(torch.distributed.barrier)

    def tell(self, error: BaseException | None) -> None:
        """Rank 0, after preparing what the others wait for (the run folder, the tokenizer, the
        token cache): that it is ready, or the one line that stopped it."""
        self.told = True
        if self.distributed:
            message = None if error is None else (first_line(error) or type(error).__name__)
            self._call(torch.distributed.broadcast_object_list, [message], src=0, group=self._slow)

    def listen(self) -> None:
        """The other ranks: wait for rank 0's ``tell``; its error stops this process too."""
        if not self.distributed:
            return
        box = [None]
        self._call(torch.distributed.broadcast_object_list, box, src=0, group=self._slow)
        if box[0] is not None:
            raise PeerLost(f"rank 0 stopped: {box[0]}")

    def _call(self, fn, *args, **kwargs):
        """A collective; a process of the run that died is one line, never a traceback or a hang
        (gloo and NCCL report a closed connection at once; one out of reach, after train.dist_timeout)."""
        try:
            return fn(*args, **kwargs)
        except (RuntimeError, ConnectionError, ValueError) as exc:  # DistBackendError is a RuntimeError
            raise lost(exc) from None


_REASONS = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "timed out", "Timeout",
            "NCCL communicator was aborted", "ECONNRESET")


def lost(exc: BaseException) -> PeerLost:
    text = str(exc)
    reason = next((r for r in _REASONS if r.lower() in text.lower()), first_line(exc)[:80])
    return PeerLost(f"another process of this run stopped or cannot be reached ({reason.lower()}): every process "
                    f"stops; continue with --resume from the last checkpoint")


def is_peer_failure(exc: BaseException) -> bool:
    """An error raised inside a collective because another process is gone."""
    if isinstance(exc, PeerLost):
        return True
    name = type(exc).__name__
    text = str(exc)
    return name in ("DistBackendError", "DistNetworkError") or any(s.lower() in text.lower() for s in _REASONS)


_WORLD: World | None = None


def current() -> World:
    """The World of this process (one process unless ``join`` ran under torchrun)."""
    return _WORLD if _WORLD is not None else World()


def launched() -> bool:
    """Started by torchrun (or another launcher that sets the same variables) with several processes."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def join(tc) -> World:
    """Join torchrun's process group (once per process); one process without torchrun."""
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    if not launched():
        return World()
    import torch.distributed as dist

    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise UsageError("WORLD_SIZE is set but RANK/LOCAL_RANK are not: start several processes with torchrun "
                         "(torchrun --nproc_per_node N -m textdiffusion train ...)") from None
    if tc.distributed not in MODES:
        raise UsageError(f"train.distributed must be one of {', '.join(MODES)}; got {tc.distributed!r}")
    cuda = tc.device != "cpu" and torch.cuda.is_available()
    if cuda:
        if local >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} GPUs: start at most "
                             f"that many processes per node (--nproc_per_node)")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = "nccl" if cuda else "gloo"
    timeout = datetime.timedelta(seconds=tc.dist_timeout)
    try:
        dist.init_process_group(backend, timeout=timeout, **({"device_id": device} if cuda else {}))
        slow = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=7))
    except (RuntimeError, ValueError, ConnectionError) as exc:
        raise UsageError(f"could not join the other {size - 1} processes ({first_line(exc)[:200]}): check "
                         f"torchrun's --rdzv-endpoint / MASTER_ADDR and that every node can reach it") from None
    _WORLD = World(rank, size, local, backend, device, slow)
    if rank != 0:
        os.environ.setdefault("TQDM_DISABLE", "1")
    return _WORLD


def leave() -> None:
    """Leave the process group (the command's end)."""
    global _WORLD
    if _WORLD is not None and torch.distributed.is_initialized():
        try:
            torch.distributed.destroy_process_group()
        except (RuntimeError, ValueError):  # pragma: no cover - a group already broken by a lost peer
            pass
    _WORLD = None


def note(message: str) -> None:
    """A line on stderr from rank 0 only (every process would print it once)."""
    if current().main:
        print(message, file=sys.stderr)


# the model across processes ------------------------------------------------------------------------
def _data_parallel():
    from torch.nn.parallel import DistributedDataParallel

    class DataParallel(DistributedDataParallel):
        """DDP that still answers the wrapped model's own attributes (``embeddings()``, ``cfg``)."""

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.module, name)

    return DataParallel


def parallelize(model: torch.nn.Module, world: World, mode: str) -> torch.nn.Module:
    """The network the loop calls: ``model`` itself (one process), DDP around it, or ``model``
    sharded in place by FSDP2 (each block, then the rest); build the optimizer after this."""
    if not world.distributed:
        return model
    if mode == "ddp":
        import inspect

        ddp = _data_parallel()
        cuda = world._device.type == "cuda"
        # the only buffers are the RoPE tables, the same everywhere: no broadcast before each forward
        quiet = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
                 else {"broadcast_buffers": False})
        return ddp(model, device_ids=[world._device] if cuda else None, **quiet)
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # pragma: no cover - torch < 2.6
        raise UsageError(f"train.distributed=fsdp needs FSDP2 (torch >= 2.6; this is {torch.__version__}): "
                         f"use train.distributed=ddp") from None
    if not hasattr(model, "blocks"):
        raise UsageError("train.distributed=fsdp shards transformer blocks; this process's network reads its "
                         "embedding table outside the forward pass (the gaussian process): use train.distributed=ddp")
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def gradient_sync(net: torch.nn.Module, sync: bool):
    """Gradient accumulation without redundant all-reduces: only the last micro-batch of a step
    synchronises (DDP's ``no_sync``, FSDP2's ``set_requires_gradient_sync``)."""
    import contextlib

    if hasattr(net, "no_sync"):
        return contextlib.nullcontext() if sync else net.no_sync()
    if hasattr(net, "set_requires_gradient_sync"):
        net.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a parameter (a DTensor shard under FSDP), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def is_sharded(model: torch.nn.Module) -> bool:
    return any(hasattr(p, "to_local") for p in model.parameters())
