"""The training loop, in plain view (nanoGPT style): the same loop trains every process and the AR twin.

AdamW, linear warmup then cosine decay, gradient accumulation and clipping, bf16 autocast on
CUDA, EMA weights, optional ``torch.compile``, seeded RNGs for data and noise, periodic
validation, metrics as JSONL, atomic checkpoints, and exact resumption. For many-epoch runs:
``train.epochs`` instead of ``max_steps``, the best validated weights kept in ``RUN/best``, early
stopping (``train.patience``) and input-token corruption (``train.input_noise``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..control.guidance import Conditioned, drop_condition
from ..data import Rows, RowSampler, WindowSampler
from ..errors import TrainingError, UsageError, first_line
from ..fileio import write_atomic
from ..limits.memory import check_training_memory
from ..processes.base import RowShard
from ..runs import build_model
from ..runs.checkpoint import (
    CheckpointError,
    checkpoint_dir,
    is_sharded_checkpoint,
    load_optimizer_state,
    load_sharded,
    load_weights,
    read_state,
    read_tensors,
    save_best,
    save_checkpoint,
    save_sharded,
)
from ..runtime import resolve_device
from ..tokenizers import Tokenizer
from . import distributed, mfu
from .adapt import Annealed, annealed_mask
from .distributed import World, gradient_sync, parallelize
from .regularization import NoisyInputs, replacement_ids

VAL_SEED = 1234  # validation windows and noise are the same at every evaluation


class EMA:
    """Exponential moving average of the weights; ``with ema.applied(model):`` swaps them in."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def decay_at(self, step: int) -> float:
        """Warm-up: min(decay, (1 + n) / (10 + n)), so early averages are not dominated by the
        random initialisation (0.999 ** 1500 would still be 22 % init after 1500 steps)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = self.decay_at(step)
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v, 1.0 - d)  # shadow = d * shadow + (1 - d) * v
            else:
                self.shadow[k].copy_(v)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(backup)


def lr_at(step: int, cfg) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class TrainResult:
    step: int
    train_loss: float  # last logged training loss, nats/token
    val_loss: float | None  # last validation loss, nats/token
    tokens_per_second: float  # during optimisation steps (validation and checkpoints excluded)
    seconds: float  # wall clock of the whole call
    peak_memory_bytes: int
    best_val_loss: float | None = None  # the lowest validation loss of the run (its weights: RUN/best)
    best_step: int | None = None
    stopped_early: bool = False  # train.patience validations in a row without a new best


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls: AVX512-BF16 or AMX on x86 (oneDNN merely emulates bf16 on plain
    AVX-512, slower than float32), the bf16 extension on ARM."""
    import platform

    try:
        if platform.machine().lower() in ("x86_64", "amd64"):
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - older or unusual builds
        return False


def autocast_for(tc, device: torch.device):
    """The mixed-precision context of one forward pass: bf16 on CUDA (train.bf16), and on CPUs
    with native bf16 when train.cpu_bf16 asks; else full precision."""
    if device.type == "cuda" and tc.bf16:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and tc.cpu_bf16:
        if cpu_has_bf16():
            return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
        print("textdiffusion: this CPU has no native bf16 (AVX512-BF16/AMX): training in float32",
              file=sys.stderr)
    return contextlib.nullcontext


def _make_optimizer(model: torch.nn.Module, cfg, device: torch.device | None = None) -> torch.optim.AdamW:
    # no weight decay on biases, norms and embeddings' 1-d params
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = cfg.fused_adamw == "on" or (cfg.fused_adamw == "auto" and device is not None and device.type == "cuda")
    try:  # fused: the whole update in one kernel per device (CUDA; the CPU has one too since torch 2.4)
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), **({"fused": True} if fused else {}))
    except (RuntimeError, TypeError, ValueError) as exc:
        raise UsageError(f"train.fused_adamw=on is not supported here ({first_line(exc)[:120]}): use "
                         f"train.fused_adamw=auto") from None


def sdpa_kernel(name: str):
    """The attention-kernel context of train.sdpa (auto: torch's own choice)."""
    if name == "auto":
        return contextlib.nullcontext
    from torch.nn.attention import SDPBackend
    from torch.nn.attention import sdpa_kernel as choose

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]
    return lambda: choose([backend])


def _no_kernel(exc: BaseException, tc, device) -> UsageError | None:
    """torch's "No available kernel" for a forced train.sdpa, as the one line that says what to do."""
    text = str(exc).lower()
    if tc.sdpa != "auto" and ("no available kernel" in text or "no viable backend" in text):
        return UsageError(f"train.sdpa={tc.sdpa} has no kernel for this model on {device.type} (flash and cudnn take "
                          f"no attention mask, which block diffusion and padded rows need; efficient is CUDA "
                          f"only): use train.sdpa=auto")
    return None


# metrics.jsonl key -> TensorBoard tag: the board mirrors the metrics file, so a resume can rebuild it
BOARD_TAGS = {"loss": "train/loss", "lr": "train/lr", "tokens_per_second": "train/tokens_per_second",
              "mfu": "train/mfu", "val_loss": "val/loss"}


def _tensorboard(tc, run_dir: Path, step: int, world: World, metrics_path: Path):
    """A SummaryWriter into RUN/tensorboard (rank 0), or None. On resume the folder is rebuilt from
    metrics.jsonl (already cut back to ``step``): one event file, so no reader can see a stale
    event file after a fresh one (TensorBoard orders files by name, and a resume in the same second
    can sort before the file it replaces)."""
    if tc.tensorboard == "off" or not world.main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if tc.tensorboard == "on":
            raise UsageError("train.tensorboard=on needs the tensorboard package: pip install tensorboard "
                             "(metrics.jsonl is written either way)") from None
        return None
    folder = run_dir / "tensorboard"
    if step:
        for old in folder.glob("events.out.tfevents.*"):
            old.unlink()
    board = SummaryWriter(log_dir=str(folder))
    if step and metrics_path.exists():
        for line in metrics_path.read_text().splitlines():
            _to_board(board, json.loads(line))
    return board


def _to_board(board, record: dict) -> None:
    for key, tag in BOARD_TAGS.items():
        if record.get(key) is not None:
            board.add_scalar(tag, record[key], record["step"])


def _peak_rss_bytes() -> int:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    except ImportError:  # pragma: no cover
        return 0


def train(
    cfg: Config,
    run_dir: str | Path,
    splits: dict[str, np.ndarray | Rows],
    tokenizer: Tokenizer,
    *,
    resume: bool = False,
    until: int | None = None,
    progress: bool = True,
    world: World | None = None,
) -> TrainResult:
    """Train ``cfg`` on token ``splits`` into ``run_dir``. ``until`` stops early at that step
    (as an interruption would), leaving a checkpoint from which ``resume`` continues exactly.
    Splits are token arrays (random windows) or SFT ``Rows`` (prompt positions fixed).

    Under torchrun (``world``: this process's place, by default ``distributed.current()``) each
    process trains on its rows of every batch and the run computes what one process computes;
    rank 0 writes the metrics, the progress bar and (DDP) the checkpoint (see distributed.py)."""
    tc, run_dir = cfg.train, Path(run_dir)
    world = world or distributed.current()
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device, world)
    torch.manual_seed(tc.seed)
    cfg.model.vocab_size = tokenizer.vocab_size
    check_training_memory(cfg, tokenizer.vocab_size, device)  # before a byte of it is allocated
    model, process = build_model(cfg, tokenizer)
    if tc.init and not resume:  # fine-tuning: start from another run's weights
        from .adapt import load_init

        load_init(model, tc.init, tokenizer)
    model.to(device)
    net = parallelize(model, world, tc.distributed)  # DDP around it, or sharded in place (FSDP)
    sharded = tc.distributed == "fsdp"  # FSDP runs keep sharded checkpoints, at any number of processes
    optimizer = _make_optimizer(model, tc, device)
    ema = EMA(model, tc.ema) if tc.ema > 0 else None
    if tc.activation_checkpointing:
        from ..models.transformer import Transformer

        for m in model.modules():
            if isinstance(m, Transformer):
                m.checkpointing = True
    L = cfg.model.context
    share = world.share(tc.batch_size)
    prompt_drop = 0.0  # prompts are dropped from SFT rows, never the context of an infilling window
    if isinstance(splits["train"], Rows):
        sampler = RowSampler(splits["train"], tc.batch_size, seed=tc.seed + 1, share=share)
        prompt_drop = tc.prompt_drop
    else:
        fim = (cfg.data.fim_rate, tokenizer.eot_id, tokenizer.pad_id, tokenizer.mask_id)
        sampler = WindowSampler(splits["train"], L, tc.batch_size, seed=tc.seed + 1, fim=fim,
                                span_rate=cfg.data.infill_rate, rows=share)
    noise_gen = torch.Generator(device=device).manual_seed(tc.seed + 2)
    noise = RowShard(noise_gen, *share, tc.batch_size) if world.distributed else noise_gen
    val = _validation_batches(splits["val"], L, tc, share)
    # one epoch = the training rows (SFT, labels) or tokens (windows) once; random windows see
    # them once on average, so "epoch" counts the data's worth of training seen
    steps_per_epoch = len(splits["train"]) / (tc.batch_size * tc.grad_accum * (1 if isinstance(sampler, RowSampler) else L))
    if tc.epochs > 0 and not resume:  # the steps are saved in config.json: a resumed run keeps them
        tc.max_steps = max(1, math.ceil(tc.epochs * steps_per_epoch))
    input_gen = None
    if tc.input_noise > 0:  # each process its own draws
        input_gen = torch.Generator(device=device).manual_seed(tc.seed + 3 + 7919 * world.rank)
        replace_by = replacement_ids(cfg.model.vocab_size, (*tokenizer.banned_ids, tokenizer.eot_id))
        protected = (tokenizer.mask_id, tokenizer.pad_id)

    step, tokens_seen = 0, 0
    best = {"best_val_loss": None, "best_step": None, "evals_since_best": 0}  # in state.json: resumed too
    metrics_path = run_dir / "metrics.jsonl"
    if resume:
        step, tokens_seen, restored = _restore(run_dir, model, ema, optimizer, sampler, noise_gen, input_gen)
        best.update({k: restored[k] for k in best if k in restored})
        if world.main:
            _truncate_metrics(metrics_path, step)
    elif world.main:
        cfg.save(run_dir / "config.json")
        tokenizer.save(run_dir / "tokenizer.json")
        metrics_path.write_text("")

    n_params = model.num_params(non_embedding=False)
    where = f"{device}" if not world.distributed else f"{world.size} processes ({tc.distributed}, {world.backend})"
    distributed.note(f"textdiffusion: {cfg.process.name} model, {n_params / 1e6:.2f}M parameters "
                     f"({model.num_params() / 1e6:.2f}M non-embedding), {where}")
    if tc.epochs > 0:
        distributed.note(f"textdiffusion: {tc.epochs:g} epochs = {tc.max_steps:,} steps ({steps_per_epoch:,.1f} per epoch)")
    keep_best = tc.keep_best and not sharded
    if tc.keep_best and sharded:
        distributed.note("textdiffusion: FSDP runs keep no RUN/best yet (train.keep_best is ignored); the last "
                         "checkpoint is kept as always")

    fwd_model = torch.compile(net) if tc.compile else net
    autocast = autocast_for(tc, device)
    kernel = sdpa_kernel(tc.sdpa)
    bf16 = autocast is not contextlib.nullcontext
    peak, peak_source = mfu.device_peak(device, bf16, tc.peak_flops)
    per_token = mfu.flops_per_token(model, process, L)
    distributed.note(f"textdiffusion: MFU against {peak / 1e12:.3g} TFLOP/s per device ({peak_source})")
    board = _tensorboard(tc, run_dir, step, world, metrics_path)
    last_step = min(until, tc.max_steps) if until is not None else tc.max_steps
    tokens_per_step = tc.batch_size * tc.grad_accum * L
    bar = _progress_bar(progress and world.main, step, tc.max_steps)
    say = bar.write if world.main else (lambda line: None)  # tqdm.write prints even from a disabled bar
    train_loss, val_loss = float("nan"), None
    t_start = time.perf_counter()
    train_seconds = 0.0  # time in optimisation steps only (not validation or checkpoints)
    start_step = step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def rng_state() -> dict[str, torch.Tensor]:
        state = {"data": sampler.gen.get_state(), "noise": noise_gen.get_state(), "torch": torch.get_rng_state()}
        if input_gen is not None:
            state["input_noise"] = input_gen.get_state()
        return state

    def save(rng: dict[str, torch.Tensor]) -> None:
        bad = next((name for name, p in model.named_parameters() if not torch.isfinite(distributed.local(p)).all()),
                   None)
        if world.any(bad is not None)[0]:  # a non-finite step is never saved: the checkpoint on disk stays the last good one
            raise TrainingError(f"the weights became non-finite by step {step} ({bad or 'in another process'}): lower "
                                f"train.lr or raise train.warmup_steps or train.grad_clip (the last checkpoint in "
                                f"{run_dir} is untouched)")
        state = {"step": step, "tokens_seen": tokens_seen, **best}
        if sharded:
            save_sharded(run_dir, model=model, ema=ema, optimizer=optimizer, state=state, rng=rng, world=world)
        elif world.main:
            save_checkpoint(run_dir, model=model, ema=ema, optimizer=optimizer, state=state, rng=rng)
        world.barrier()  # when any process returns, the checkpoint is on disk

    saved_step, rng_done = step, rng_state()
    logged_step, logged_seconds = step, 0.0
    stopped_early = bool(tc.patience) and best["evals_since_best"] >= tc.patience
    if stopped_early and step < last_step:  # resuming a run that had already stopped early
        say(f"this run stopped early at step {step} (no new best validation loss in {tc.patience} validations; best "
            f"{best['best_val_loss']:.4f} at step {best['best_step']}): raise train.patience to train on")
        last_step = step
    with open(metrics_path if world.main else os.devnull, "a") as metrics, _StopOnSignal() as stop, \
            _explained(world, tc, device), contextlib.closing(board) if board else contextlib.nullcontext():
        while step < last_step:
            # every process stops at the same step: a signal or the time budget seen by any of them
            stopping, out_of_time = world.any(stop.requested,
                                              tc.max_seconds and time.perf_counter() - t_start >= tc.max_seconds)
            if stopping:  # Ctrl-C, SIGTERM, SIGHUP: checkpoint the last completed step, then stop
                bar.close()
                if step > saved_step:
                    metrics.flush()
                    save(rng_done)
                raise Interrupted(stop.signum)
            if out_of_time:
                say(f"time budget of {tc.max_seconds:g}s reached at step {step}")
                if step > saved_step:
                    save(rng_done)
                break
            t_step = time.perf_counter()
            lr = lr_at(step, tc)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            loss_sum = 0.0
            for micro in range(tc.grad_accum):
                batch, fixed, labels = _on_device(sampler.next(), device)
                drop = tc.cond_drop if labels is not None else prompt_drop
                batch, labels = drop_condition(batch, fixed, labels, drop, noise, tokenizer.pad_id,
                                               cfg.model.num_labels)
                net_in = fwd_model if input_gen is None else NoisyInputs(fwd_model, tc.input_noise, replace_by,
                                                                          protected, input_gen)
                called = net_in if labels is None else Conditioned(net_in, labels)
                if step < cfg.adapt.anneal_steps:  # AR -> diffusion: causal attention opening up step by step
                    called = Annealed(called, annealed_mask(step, cfg.adapt.anneal_steps, batch.shape[1], device))
                # DDP/FSDP: all-reduce on the last micro-batch only; the attention kernel also in backward
                # (activation checkpointing recomputes the forward there)
                with gradient_sync(net, micro == tc.grad_accum - 1), kernel():
                    with autocast():
                        out = process.loss(called, batch, noise, fixed)
                    if world.distributed:  # this share's tokens of the whole batch's (DDP/FSDP average over processes)
                        (tokens,) = world.sum(out.num_tokens)
                        weight = out.num_tokens / max(tokens, 1.0)
                        (out.loss * (weight * world.size / tc.grad_accum)).backward()
                        loss_sum += out.loss.item() * weight / tc.grad_accum
                    else:
                        (out.loss / tc.grad_accum).backward()
                        loss_sum += out.loss.item() / tc.grad_accum
            if world.distributed:
                (loss_sum,) = world.sum(loss_sum)
            if not math.isfinite(loss_sum):
                raise TrainingError(
                    f"loss became {loss_sum} at step {step}: lower train.lr or raise train.warmup_steps "
                    f"(the last checkpoint in {run_dir} is untouched)"
                )
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model, step)
            step += 1
            tokens_seen += tokens_per_step
            rng_done = rng_state()
            train_loss = loss_sum
            train_seconds += time.perf_counter() - t_step
            elapsed = time.perf_counter() - t_start
            tok_s = (step - start_step) * tokens_per_step / max(train_seconds, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
            if step % tc.log_every == 0 or step == last_step:
                # the rate of the steps since the last log line (the first ones include warm-up)
                recent = tokens_per_step * (step - logged_step) / max(train_seconds - logged_seconds, 1e-9)
                used = mfu.mfu(recent, per_token, peak, world.size)
                _log(metrics, board, step=step, epoch=round(step / steps_per_epoch, 4), loss=loss_sum, lr=lr,
                     tokens=tokens_seen, tokens_per_second=tok_s, seconds=elapsed, mfu=used, peak_flops=peak)
                logged_step, logged_seconds = step, train_seconds
            if step % tc.eval_every == 0 or step == tc.max_steps:
                val_loss = _validate(model, ema, process, val, device, autocast, world, share, tc.batch_size)
                note = _track_best(best, val_loss, step)
                if note == "new best" and keep_best and world.main:
                    save_best(run_dir, ema.shadow if ema is not None else model.state_dict(),
                              {"step": step, "val_loss": val_loss, "epoch": round(step / steps_per_epoch, 4)})
                # the training objective on fixed validation windows; `textdiffusion eval` adds the
                # reconstruction term that makes the diffusion loss an exact bound
                _log(metrics, board, step=step, epoch=round(step / steps_per_epoch, 4), val_loss=val_loss,
                     val_loss_bits=val_loss / math.log(2), best_val_loss=best["best_val_loss"])
                say(f"step {step}: val loss {val_loss:.4f} nats/token ({val_loss / math.log(2):.4f} bits; {note})")
                if tc.patience and best["evals_since_best"] >= tc.patience:
                    stopped_early = True
                    say(f"early stop at step {step}: no new best validation loss in {tc.patience} validations "
                        f"(best {best['best_val_loss']:.4f} at step {best['best_step']}, kept in {run_dir / 'best'})")
            if step % tc.ckpt_every == 0 or step == last_step or stopped_early:
                metrics.flush()
                if board is not None:
                    board.flush()
                save(rng_done)
                saved_step = step
            if stopped_early:
                break
    bar.close()
    seconds = time.perf_counter() - t_start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss_bytes()
    return TrainResult(step, train_loss, val_loss, (step - start_step) * tokens_per_step / max(train_seconds, 1e-9),
                       seconds, peak, best["best_val_loss"], best["best_step"], stopped_early)


def _track_best(best: dict, val_loss: float, step: int) -> str:
    """Record a validation in ``best`` (lowest loss, its step, validations since); say how it compares."""
    if best["best_val_loss"] is None or val_loss < best["best_val_loss"]:
        best.update(best_val_loss=val_loss, best_step=step, evals_since_best=0)
        return "new best"
    best["evals_since_best"] += 1
    return f"best {best['best_val_loss']:.4f} at step {best['best_step']}"


@contextlib.contextmanager
def _explained(world: World, tc, device):
    """Errors with a known cause as one line: a collective that failed because another process of
    the run died (inside DDP's or FSDP's own all-reduce too: distributed.PeerLost), a forced
    attention kernel that cannot run this model."""
    try:
        yield
    except RuntimeError as exc:
        if world.distributed and distributed.is_peer_failure(exc):
            raise distributed.lost(exc) from None
        explained = _no_kernel(exc, tc, device)
        if explained is not None:
            raise explained from None
        raise


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal (``signum``: SIGINT, SIGTERM or SIGHUP), after checkpointing
    the last completed step."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class _StopOnSignal:
    """The first Ctrl-C, SIGTERM (what schedulers and ``kill`` send) or SIGHUP (a closed
    terminal) asks the loop to stop after the current step (which is then checkpointed, so
    --resume loses nothing and stays exact); a second one stops at once."""

    def __init__(self):
        self.requested = False
        self.signum = signal.SIGINT
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.requested:
            raise Interrupted(signum)
        self.requested, self.signum = True, signum
        again = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\nstopping after this step ({again} again to stop now)", file=sys.stderr)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        return False


def _progress_bar(enabled: bool, initial: int, total: int):
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True,
                file=sys.stderr, mininterval=0.2 if interactive else 10.0)


def _log(fh, board, **record) -> None:
    """One record into metrics.jsonl and the same values into TensorBoard (when on)."""
    fh.write(json.dumps(record) + "\n")
    if board is not None:
        _to_board(board, record)


def _on_device(batch, device) -> tuple:
    """(tokens, fixed, labels) on ``device`` from a window batch (tokens only) or a row batch."""
    parts = (batch,) if isinstance(batch, torch.Tensor) else batch
    parts = tuple(x.to(device, non_blocking=True) for x in parts) + (None,) * (3 - len(parts))
    return parts


def _validation_batches(split: np.ndarray | Rows, length: int, tc, share: tuple[int, int] | None = None) -> list:
    """This process's rows (``share``) of the fixed validation batches."""
    if isinstance(split, Rows):
        sampler = RowSampler(split, tc.batch_size, seed=VAL_SEED, share=share)
    else:
        sampler = WindowSampler(split, length, tc.batch_size, seed=VAL_SEED, split="validation", rows=share)
    return [sampler.next() for _ in range(tc.eval_batches)]


@torch.no_grad()
def _validate(model, ema, process, batches, device, autocast, world: World | None = None,
              share: tuple[int, int] | None = None, batch_size: int = 0) -> float:
    """Mean loss (nats/token) on fixed windows with fixed noise, with EMA weights if enabled;
    under torchrun each process scores its rows and the sums are reduced over processes."""
    gen = torch.Generator(device=device).manual_seed(VAL_SEED)
    noise = RowShard(gen, *share, batch_size) if world is not None and world.distributed else gen
    ctx = ema.applied(model) if ema is not None else contextlib.nullcontext()
    model.eval()
    total, count = 0.0, 0
    with ctx:
        for batch in batches:
            tokens, fixed, labels = _on_device(batch, device)
            net = model if labels is None else Conditioned(model, labels)
            with autocast():
                out = process.loss(net, tokens, noise, fixed)
            total += out.loss.item() * out.num_tokens
            count += out.num_tokens
    model.train()
    if world is not None and world.distributed:
        total, count = world.sum(total, count)
    return total / max(count, 1)


def _restore(run_dir: Path, model, ema, optimizer, sampler, noise_gen, input_gen=None) -> tuple[int, int, dict]:
    """Everything a checkpoint holds, back in place; (step, tokens seen, the whole state.json).
    Any file missing, damaged or from another run is a CheckpointError naming it (nothing is
    half-restored: the run is not changed)."""
    ckpt = checkpoint_dir(run_dir)
    state = read_state(ckpt)
    if is_sharded_checkpoint(ckpt) or distributed.is_sharded(model):
        load_sharded(ckpt, model, ema, optimizer)
        _restore_rng(ckpt, sampler, noise_gen, input_gen)
        return state["step"], state["tokens_seen"], state
    if "optimizer" not in state or not (ckpt / "optimizer.safetensors").exists():
        raise CheckpointError(f"{run_dir} holds weights only (an exported model, or a checkpoint without its "
                              f"optimizer state), so it cannot be resumed: fine-tune it instead with "
                              f"train --init {run_dir} --out NEW_DIR")
    if not isinstance(state.get("step"), int) or not isinstance(state.get("tokens_seen"), int):
        raise CheckpointError(f"corrupt checkpoint file {ckpt / 'state.json'}: no whole-number step and tokens_seen")
    load_weights(model, ckpt, prefer_ema=False)
    if ema is not None:
        if not (ckpt / "ema.safetensors").exists():
            raise CheckpointError(f"{ckpt} has no EMA weights but train.ema > 0")
        shadow = read_tensors(ckpt / "ema.safetensors", device=str(next(model.parameters()).device))
        if {k: tuple(v.shape) for k, v in shadow.items()} != {k: tuple(v.shape) for k, v in ema.shadow.items()}:
            raise CheckpointError(f"{ckpt / 'ema.safetensors'} does not fit this model: is it another run's checkpoint?")
        ema.shadow = shadow
    load_optimizer_state(optimizer, ckpt, state["optimizer"])
    _restore_rng(ckpt, sampler, noise_gen, input_gen)
    return state["step"], state["tokens_seen"], state


def _restore_rng(ckpt: Path, sampler, noise_gen, input_gen=None) -> None:
    rng = read_tensors(ckpt / "rng.safetensors")
    try:
        sampler.gen.set_state(rng["data"])
        noise_gen.set_state(rng["noise"])
        torch.set_rng_state(rng["torch"])
        if input_gen is not None and "input_noise" in rng:  # (a run that turns input_noise on at resume starts it fresh)
            input_gen.set_state(rng["input_noise"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"corrupt checkpoint file {ckpt / 'rng.safetensors'}: {exc}") from None


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after the checkpoint we resume from (they will be logged again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().split("\n"):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if record.get("step", step + 1) <= step:
            keep.append(line)
    write_atomic(path, "".join(line + "\n" for line in keep))  # a kill mid-rewrite keeps the old history
