"""Configuration: plain dataclasses, read from TOML, overridden with ``--set section.key=value``.

One dataclass per component (model, process, data, train). Each validates itself in
``__post_init__`` with a message that names the flag to change. The whole ``Config`` is saved
as JSON beside every checkpoint, so a run directory is enough to rebuild its model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .fileio import write_atomic
from .processes.registry import NAMES
from .processes.registry import PROCESSES as PROCESS_SPECS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib




def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_choice(value: str, choices: tuple[str, ...], flag: str) -> None:
    _check(value in choices, f"{flag} must be one of {', '.join(choices)}; got {value!r}")


MAX_LR = 10.0  # train.lr above this is a typo (AdamW moves every weight by about lr per step)


@dataclass
class ModelConfig:
    """The transformer denoiser (also the AR twin's backbone)."""

    n_layer: int = 6
    n_head: int = 6
    d_model: int = 384
    context: int = 256  # tokens per training window = the longest sequence the model sees
    mlp_ratio: int = 4
    dropout: float = 0.0  # residual dropout (after attention and the MLP), and attention's unless attn_dropout is set
    attn_dropout: float | None = None  # dropout on the attention weights; unset (None) = model.dropout
    # adaLN conditioning on the diffusion time t; unset (None) = the process's default:
    # off for masked (MDLM: not needed at convergence) and AR, on for uniform
    time_cond: bool | None = None
    vocab_size: int = 0  # filled in from the tokenizer at train time
    num_labels: int = 0  # class labels the model is conditioned on (filled in from labelled data)
    # architecture variants (defaults: our own models); the public models' adapters set them
    norm: str = "layer"  # layer (LayerNorm) | rms (RMSNorm: LLaMA, Qwen2, LLaDA)
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # gelu (fc -> GELU -> proj) | swiglu (proj(silu(fc x) * up x))
    mlp_hidden: int = 0  # hidden width of the MLP; 0 = mlp_ratio * d_model
    n_kv_head: int = 0  # key/value heads (grouped-query attention); 0 = n_head
    qkv_bias: bool = False  # biases on the query/key/value projections (Qwen2, Dream)
    rope_base: float = 10000.0  # RoPE theta (LLaDA 500000, Qwen2/Dream 1000000)
    positions: str = "rope"  # rope (rotary, on queries and keys) | learned (a table added to the input: GPT-2)
    proj_bias: bool = False  # a bias on the attention's output projection (GPT-2)
    tie_embeddings: bool = False  # the output head shares the input embedding's weights
    logits_shift: int = 0  # 1: position i's logits predict token i + 1 (Dream); the model shifts them back
    # DiT variants (MDLM): the adaLN conditioning, weight-only norms, biases, a final adaLN
    cond_dim: int = 0  # width of the time-conditioning vector; 0 = d_model
    time_scale: float = 1000.0  # t is multiplied by this before its sinusoidal features (MDLM's sigma: 1)
    # t | zero (MDLM without time conditioning: the network always sees 0) | sigma (SEDD: the
    # total noise -log(1 - t) of the log-linear schedule, t capped at 1 - 1e-3)
    time_input: str = "t"
    ada_norm_weight: bool = False  # the norms keep their weights under adaLN (MDLM's weight-only LayerNorm)
    norm_bias: bool = True  # LayerNorm bias (MDLM: none)
    mlp_bias: bool = False  # biases in the MLP's linear layers (MDLM)
    final_ada: bool = False  # adaLN shift/scale of the final norm (DiT's final layer)
    head_bias: bool = False  # a bias on the output head (MDLM)

    @property
    def reads_time(self) -> bool:
        """Whether the network's output depends on t (a time-conditioned structure fed a constant
        does not: an unchanged x_t then needs no new call)."""
        return bool(self.time_cond) and self.time_input != "zero"

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "d_model", "context", "mlp_ratio"):
            _check(getattr(self, name) > 0, f"model.{name} must be positive")
        _check(
            self.d_model % self.n_head == 0,
            f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})",
        )
        _check_choice(self.positions, ("rope", "learned"), "model.positions")
        _check(self.positions != "rope" or (self.d_model // self.n_head) % 2 == 0,
               "model.d_model / model.n_head must be even (RoPE)")
        _check(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        _check(self.attn_dropout is None or 0.0 <= self.attn_dropout < 1.0,
               "model.attn_dropout must be in [0, 1) (unset: the same as model.dropout)")
        _check(self.num_labels >= 0, "model.num_labels must be >= 0")
        _check_choice(self.norm, ("layer", "rms"), "model.norm")
        _check_choice(self.mlp, ("gelu", "swiglu"), "model.mlp")
        _check(self.norm_eps > 0, "model.norm_eps must be positive")
        _check(self.mlp_hidden >= 0, "model.mlp_hidden must be >= 0 (0: mlp_ratio * d_model)")
        kv = self.n_kv_head or self.n_head
        _check(0 < kv <= self.n_head and self.n_head % kv == 0,
               f"model.n_kv_head ({self.n_kv_head}) must divide model.n_head ({self.n_head})")
        _check(self.rope_base > 1, "model.rope_base must be > 1")
        _check(self.logits_shift in (0, 1), "model.logits_shift must be 0 or 1")
        _check(self.cond_dim >= 0, "model.cond_dim must be >= 0 (0: d_model)")
        _check(self.time_scale > 0, "model.time_scale must be positive")
        _check_choice(self.time_input, ("t", "zero", "sigma"), "model.time_input")
        _check(not (self.final_ada or self.ada_norm_weight) or bool(self.time_cond),
               "model.final_ada and model.ada_norm_weight need time conditioning (model.time_cond=true)")


PROCESSES = NAMES  # the names, from processes/registry.py
SCHEDULES = ("loglinear", "cosine")


@dataclass
class ProcessConfig:
    """The forward corruption and its training objective."""

    name: str = "masked"  # masked | uniform | gaussian | sedd-absorb | sedd-uniform | block | ar
    schedule: str = "loglinear"  # alpha(t) of the discrete processes (gaussian: linear in log-SNR)
    antithetic: bool = True  # low-discrepancy timestep sampling
    num_steps: int = 0  # T for discrete-time (D3PM-style) training; 0 = continuous time
    # gaussian only: embedding size, log-SNR at t = 0 and t = 1, self-conditioning
    embed_dim: int = 16
    logsnr_max: float = 6.0
    logsnr_min: float = -6.0
    self_cond: bool = False
    # block only (BD3-LM): tokens per block; 1 = autoregressive, the context = plain masked diffusion
    block_size: int = 16

    def __post_init__(self) -> None:
        _check_choice(self.name, PROCESSES, "process.name (--process)")
        _check(self.num_steps >= 0, "process.num_steps must be >= 0 (0 = continuous time)")
        _check(not self.num_steps or self.name not in PROCESS_SPECS or PROCESS_SPECS[self.name].discrete_time,
               "process.num_steps (discrete time) is for masked and uniform only")
        _check_choice(self.schedule, SCHEDULES, "process.schedule")
        _check(self.embed_dim > 0, "process.embed_dim must be positive")
        _check(self.logsnr_min < self.logsnr_max, "process.logsnr_min must be below process.logsnr_max")
        _check(not self.self_cond or PROCESS_SPECS[self.name].backbone == "embedding",
               "process.self_cond is for the gaussian process only")
        _check(self.block_size > 0, "process.block_size must be positive")


TOKENIZERS = ("char", "byte", "bpe")


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes token ids."""

    path: str = ""  # text file, folder, JSONL, parquet or Arrow file, saved `datasets` directory, or "stdlib"
    text_field: str = "text"  # the JSONL field or table column holding the text
    workers: int = 0  # tokenizer processes for corpora larger than one chunk; 0 = one per core (at most 8)
    glob: str = "**/*.txt"  # files to read when path is a folder
    tokenizer: str = "char"  # char | byte | bpe
    vocab_size: int = 4096  # BPE only
    val_fraction: float = 0.05  # single file: the last part; several documents: hashed by name
    max_docs: int = 0  # 0 = all; a cap for quick runs
    cut_at_newline: bool = True  # single file: move the train/val cut to the next newline
    sft: bool = False  # instruction tuning: path is JSONL of {"prompt", "response"}; loss on responses only
    labels: bool = False  # class-conditional: path is JSONL of {"text", "label"}; windows of one label each
    fim_rate: float = 0.0  # AR twin only: fraction of training windows in fill-in-the-middle order
    # diffusion only: fraction of training windows that are infilling examples (one span, cut like
    # the FIM twin's middle, is the target; the rest is clean context): the conditional ELBO of a
    # hole given its surroundings, the situation `infill` meets; validation stays unconditional
    infill_rate: float = 0.0

    def __post_init__(self) -> None:
        _check_choice(self.tokenizer, TOKENIZERS, "data.tokenizer")
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction must be in (0, 1)")
        _check(self.vocab_size >= 260, "data.vocab_size must be at least 260 (256 bytes + specials)")
        _check(self.max_docs >= 0, "data.max_docs must be >= 0")
        _check(self.workers >= 0, "data.workers must be >= 0 (0 = one per core)")
        _check(bool(self.text_field), "data.text_field must name a field (default 'text')")
        _check(0.0 <= self.fim_rate <= 1.0, "data.fim_rate must be in [0, 1]")
        _check(0.0 <= self.infill_rate <= 1.0, "data.infill_rate must be in [0, 1]")
        _check(self.infill_rate == 0 or not (self.sft or self.labels),
               "data.infill_rate trains on plain text windows: not with data.sft or data.labels")


SDPA_KERNELS = ("auto", "flash", "efficient", "cudnn", "math")  # train.sdpa


@dataclass
class TrainConfig:
    """The optimisation loop."""

    batch_size: int = 32
    grad_accum: int = 1
    max_steps: int = 2000
    # passes over the training data instead of max_steps: > 0 sets max_steps to the steps that see
    # epochs x the training tokens (windows) or rows (SFT, labels); 0 = use max_steps
    epochs: float = 0.0
    # early stopping: stop after this many validations in a row without a new best validation loss;
    # 0 = off. The best weights are kept in RUN/best either way (keep_best)
    patience: int = 0
    keep_best: bool = True  # RUN/best: the weights of the lowest validation loss so far (generate RUN --checkpoint best)
    # input-token corruption: during training, replace this fraction of the network's input tokens
    # (visible ones; never mask or padding) with random text tokens, targets unchanged. The AR twin's
    # answer to the random input masking diffusion gets for free (Gao et al. 2025); for every token process
    input_noise: float = 0.0
    max_seconds: float = 0.0  # wall-clock budget for this invocation; 0 = none (the LR schedule still follows max_steps)
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema: float = 0.0  # EMA decay of the weights; 0 disables (use e.g. 0.999 for long runs)
    eval_every: int = 250
    eval_batches: int = 8
    ckpt_every: int = 500
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # bf16 autocast on CUDA
    # bf16 autocast on the CPU as well: about 1.9x the training speed on CPUs with native bf16
    # (AVX512-BF16 or AMX; measured on this project's EPYC); ignored, with a note, on CPUs without it
    cpu_bf16: bool = False
    compile: bool = False  # torch.compile the model
    threads: int = 0  # torch CPU threads; 0 = torch's default
    init: str = ""  # start from this run's weights (fine-tuning; its tokenizer, model and process too)
    # classifier-free guidance: how often a label (data.labels) / an SFT prompt (data.sft) is dropped.
    # Prompt dropping is off by default: rows without their prompt have irreducible loss that the
    # ELBO's 1/t weights turn into gradient noise, which slows instruction tuning a lot
    cond_drop: float = 0.1
    prompt_drop: float = 0.0
    # several processes (torchrun): ddp = every process holds the whole model and optimizer; fsdp =
    # FSDP2, parameters, gradients and optimizer state sharded over the processes (sharded checkpoints)
    distributed: str = "ddp"
    dist_timeout: float = 900.0  # seconds a collective waits for a process that does not answer
    # efficiency options (README "Training on GPUs"): AdamW as one fused kernel (auto = on CUDA)
    fused_adamw: str = "auto"  # auto | on | off
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory, ~30% more compute
    sdpa: str = "auto"  # attention kernel: auto (torch picks) | flash | efficient | cudnn | math
    peak_flops: float = 0.0  # one device's peak FLOP/s for MFU; 0 = the datasheet's (known GPUs) or measured at start
    tensorboard: str = "auto"  # TensorBoard event files in RUN/tensorboard: auto (when installed) | on | off

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum", "max_steps", "eval_every", "ckpt_every", "log_every"):
            _check(getattr(self, name) > 0, f"train.{name} must be positive")
        _check(math.isfinite(self.epochs) and self.epochs >= 0,
               "train.epochs must be >= 0 (0: train.max_steps steps; e.g. 20 for twenty passes over the data)")
        _check(self.patience >= 0, "train.patience must be >= 0 (0: no early stopping; e.g. 5 validations)")
        _check(0.0 <= self.input_noise < 1.0, "train.input_noise must be in [0, 1) (0: off; typical 0.05 to 0.2)")
        _check(0 < self.lr <= MAX_LR, f"train.lr must be positive and at most {MAX_LR:g} (AdamW steps that large "
                                       f"diverge at once; typical: 1e-4 to 1e-2)")
        _check(0 <= self.min_lr <= self.lr, "train.min_lr must be in [0, train.lr]")
        _check(self.weight_decay >= 0, "train.weight_decay must be >= 0 (0 disables; typical: 0.1)")
        _check(0 <= self.beta2 < 1, "train.beta2 must be in [0, 1) (typical: 0.95 to 0.999)")
        _check(self.warmup_steps >= 0, "train.warmup_steps must be >= 0")
        _check(0.0 <= self.ema < 1.0, "train.ema must be in [0, 1)")
        _check(self.grad_clip >= 0, "train.grad_clip must be >= 0 (0 disables)")
        _check(self.eval_batches > 0, "train.eval_batches must be positive")
        _check(self.max_seconds >= 0, "train.max_seconds must be >= 0 (0 = no budget)")
        _check(self.threads >= 0, "train.threads must be >= 0 (0 = torch's default)")
        _check(0.0 <= self.cond_drop < 1.0, "train.cond_drop must be in [0, 1)")
        _check(0.0 <= self.prompt_drop < 1.0, "train.prompt_drop must be in [0, 1)")
        _check(self.distributed in ("ddp", "fsdp"), f"train.distributed must be ddp or fsdp; got {self.distributed!r}")
        _check(self.dist_timeout > 0, "train.dist_timeout must be positive (seconds)")
        for name, allowed in (("fused_adamw", ("auto", "on", "off")), ("tensorboard", ("auto", "on", "off")),
                              ("sdpa", SDPA_KERNELS)):
            _check(getattr(self, name) in allowed, f"train.{name} must be one of {', '.join(allowed)}; "
                                                   f"got {getattr(self, name)!r}")
        _check(self.peak_flops >= 0, "train.peak_flops must be >= 0 (0 = the datasheet's or measured)")
        _check(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None,
               f"train.device must be auto, cpu, mps, cuda or cuda:N; got {self.device!r}")


CONVERTS = ("masked", "block")  # the processes an AR run converts into (train --init AR_RUN --process NAME)


@dataclass
class AdaptConfig:
    """AR -> diffusion conversion (``train --init AR_RUN --process masked|block``): how the AR
    model's weights start their diffusion training."""

    # masked: the attention mask goes from causal to bidirectional over the first anneal_steps
    # steps, each future position opened with probability step / anneal_steps (DiffuLLaMA); 0 = off
    anneal_steps: int = 0
    # masked: position i's logits predict token i + 1, the alignment the AR head was trained with
    # (Dream, DiffuLLaMA): auto = on for masked; block diffusion keeps its own (no shift)
    shift: str = "auto"  # auto | on | off

    def __post_init__(self) -> None:
        _check(self.anneal_steps >= 0, "adapt.anneal_steps must be >= 0 (0 = bidirectional from the start)")
        _check(self.shift in ("auto", "on", "off"), f"adapt.shift must be auto, on or off; got {self.shift!r}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)

    def __post_init__(self) -> None:
        if self.model.time_cond is None:
            self.model.time_cond = PROCESS_SPECS[self.process.name].time_cond
        backbone = PROCESS_SPECS[self.process.name].backbone  # causal: the AR twin; embedding: Gaussian
        _check(not (backbone == "causal" and self.model.time_cond),
               "model.time_cond must be false for the AR twin (--process ar has no diffusion time)")
        _check(self.data.fim_rate == 0 or backbone == "causal",
               "data.fim_rate is for the AR twin (--process ar): diffusion models infill without it")
        _check(self.data.infill_rate == 0 or backbone != "causal",
               "data.infill_rate is for diffusion models; the AR twin learns infilling with data.fim_rate")
        _check(not (self.process.name == "block" and self.model.time_cond and self.model.time_input != "zero"),
               "model.time_cond must be false for block diffusion (each block has its own time)")
        _check(self.adapt.anneal_steps == 0 or self.process.name == "masked",
               "adapt.anneal_steps anneals a masked model's attention (block diffusion has its block-causal mask)")
        _check(self.train.input_noise == 0 or backbone != "embedding",
               "train.input_noise replaces input tokens: the gaussian process's inputs are noisy embeddings, use "
               "model.dropout instead")
        _check(self.adapt.shift != "on" or self.process.name == "masked",
               "adapt.shift=on is for masked diffusion (a block model reads its blocks unshifted)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Build from nested dicts; unknown sections or keys are errors, not silently dropped."""
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        _check(isinstance(raw, dict), f"a config is a table of sections ({', '.join(sections)}); got a {type(raw).__name__}")
        kwargs = {}
        for section, values in raw.items():
            _check(section in sections, f"unknown config section {section!r} (known: {', '.join(sections)})")
            _check(isinstance(values, dict), f"config section {section!r} must be a table")
            klass = _SECTION_CLASSES[section]
            known = typing.get_type_hints(klass)  # the fields' real types (not their annotation strings)
            for key, value in values.items():
                _check(key in known, f"unknown config key {section}.{key} (known: {', '.join(known)})")
                values[key] = _coerce(value, known[key], f"{section}.{key}")
            kwargs[section] = klass(**values)
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        """Write atomically: a crash never leaves a half-written config.json."""
        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Config:
        return cls.from_dict(json.loads(_read_utf8(Path(path))))


DERIVED = {"model.vocab_size": "it is the tokenizer's size: set data.vocab_size (BPE) instead",
           "model.num_labels": "it is the number of labels in the data (train --labels)"}

_SECTION_CLASSES = {"model": ModelConfig, "process": ProcessConfig, "data": DataConfig, "train": TrainConfig,
                    "adapt": AdaptConfig}


def _coerce(value: Any, tp: Any, flag: str) -> Any:
    """Convert a TOML/JSON/--set value to the field's type (``typing.get_type_hints``: bool, int,
    float, str, or ``X | None`` where "auto", "none" or "" mean None), or raise naming the flag."""
    args = typing.get_args(tp)
    if type(None) in args:  # X | None
        if value is None or (isinstance(value, str) and value.lower() in ("auto", "none", "")):
            return None
        (tp,) = [a for a in args if a is not type(None)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{flag} must be true or false; got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{flag} must be an integer; got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{flag} must be an integer; got {value!r}") from None
        if not as_float.is_integer():
            raise ConfigError(f"{flag} must be an integer; got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{flag} must be a number; got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{flag} must be a number; got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{flag} must be a finite number; got {value!r}")
        return number
    if tp is str:
        return str(value)
    raise ConfigError(f"{flag}: unsupported type {tp}")  # pragma: no cover


def _read_utf8(path: Path) -> str:
    """A config file's text (a byte-order mark is dropped), or an error naming the file."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text: save it as UTF-8") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- TOML file <- ``section.key=value`` overrides, validated once at the end."""
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        path = Path(path)
        _check(path.is_file(), f"config file not found: {path}")
        try:
            raw = tomllib.loads(_read_utf8(path))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for key, why in DERIVED.items():  # a config file may not set them either (a run's config.json records them)
        section, name = key.split(".")
        _check(not (isinstance(raw.get(section), dict) and name in raw[section]), f"{key} cannot be set in {path}: {why}")
    apply_overrides(raw, overrides or [])
    return Config.from_dict(raw)


def parse_override(item: str) -> tuple[str, str, str]:
    """``"train.lr=3e-4"`` -> ``("train", "lr", "3e-4")``."""
    key, sep, value = item.partition("=")
    section, dot, name = key.strip().partition(".")
    _check(bool(sep) and bool(dot) and bool(name), f"--set expects section.key=value; got {item!r}")
    return section, name, value.strip()


def apply_overrides(raw: dict[str, dict[str, Any]], overrides: list[str], sections: tuple[str, ...] | None = None) -> None:
    """Write ``section.key=value`` items into nested dicts (validated later by ``Config.from_dict``)."""
    for item in overrides:
        section, name, value = parse_override(item)
        _check(f"{section}.{name}" not in DERIVED, f"--set {section}.{name} cannot be set: "
                                                  f"{DERIVED.get(f'{section}.{name}')}")
        if sections is not None:
            _check(section in sections, f"cannot change {section}.{name} here (only {', '.join(s + '.*' for s in sections)})")
        raw.setdefault(section, {})[name] = value
