"""Every sampler in one table, importable without torch: its name, the processes it fits, a
one-line description, where its class lives, and an ``Options`` dataclass of the settings it
takes (typed fields with defaults and a one-line doc each, checked with messages that name the
command-line flag).

Everything that lists samplers or their settings reads this table: ``build_sampler``, the CLI's
flags and ``--help``, model-card validation, the ``Pipeline`` keyword arguments and the README's
sampler table (``python -m textdiffusion.sampling.registry`` prints it). Adding a sampler is one
new file in this package plus one ``SamplerSpec`` entry below (see docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError


def option(default: Any, doc: str, *, choices: tuple[str, ...] = (), low: float | None = None,
           high: float | None = None, above: float | None = None, cli: bool = True, request: bool = True) -> Any:
    """A field of an ``Options`` dataclass: its default, a one-line doc and what values it takes
    (``choices``; ``low`` <= value <= ``high``; value > ``above``). ``cli=False``: Python API only;
    ``request=False``: a server's requests may not set it (its operator does: a path to load)."""
    meta = {"doc": doc, "choices": choices, "low": low, "high": high, "above": above, "cli": cli,
            "request": request}
    return field(default=default, metadata=meta)


def flag(name: str) -> str:
    """The command-line flag of an option: kv_cache -> --kv-cache."""
    return "--" + name.replace("_", "-")


# how an option is named in its error: as the caller wrote it. The command line wraps a command in
# ``options_named("flag")`` (--top-p); the Python API, requests and model cards use the name (top_p).
_NAMING: contextvars.ContextVar[str] = contextvars.ContextVar("textdiffusion_option_naming", default="name")


def written(name: str) -> str:
    """Option ``name`` the way the caller wrote it: ``--top-p`` inside ``options_named("flag")``, else ``top_p``."""
    return flag(name) if _NAMING.get() == "flag" else name


@contextlib.contextmanager
def options_named(style: str):
    """Within: option errors name options as ``style`` says ("flag": --top-p; "name": top_p)."""
    token = _NAMING.set(style)
    try:
        yield
    finally:
        _NAMING.reset(token)


def _kind(tp) -> type:
    return {"int": int, "float": float, "str": str, "bool": bool, "object": object}.get(tp, tp) if isinstance(tp, str) else tp


# a temperature outside this range (but 0, greedy) is finite yet unusable: logits divided by it
# overflow float32 (1e-320 made every probability NaN, and failed every request batched with it)
TEMPERATURE_RANGE = (1e-6, 1e6)


def check_temperature(value: float, name: str = "temperature") -> None:
    """A UsageError unless ``value`` is 0 (greedy) or within TEMPERATURE_RANGE."""
    low, high = TEMPERATURE_RANGE
    if value != 0 and not low <= value <= high:
        raise UsageError(f"{name} must be 0 (greedy) or between {low:g} and {high:g}; got {value!r} "
                         f"(logits divided by it overflow)")


@dataclass
class Options:
    """The settings every sampler takes; each sampler's ``Options`` adds its own."""

    temperature: float = option(1.0, "softmax temperature; 0 = greedy", low=0.0, high=TEMPERATURE_RANGE[1])
    top_k: int = option(0, "keep the k most likely tokens; 0 = off", low=0)
    top_p: float = option(1.0, "nucleus sampling mass; 1 = off", above=0.0, high=1.0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_value(f, getattr(self, f.name))
        check_temperature(self.temperature, written("temperature"))

    @classmethod
    def own_fields(cls) -> list[dataclasses.Field]:
        """The fields this sampler adds to the shared ones."""
        shared = {f.name for f in dataclasses.fields(Options)}
        return [f for f in dataclasses.fields(cls) if f.name not in shared]


def check_value(f: dataclasses.Field, value: Any) -> None:
    """A UsageError naming the option (as the caller wrote it: ``written``) unless ``value`` is of
    the field's kind and range."""
    meta, name = f.metadata, written(f.name)
    check_kind(f, value, name)
    if meta.get("choices") and value not in meta["choices"]:
        *rest, last = meta["choices"]
        raise UsageError(f"{name} must be {', '.join(rest)} or {last}; got {value!r}")
    if meta.get("low") is not None and value < meta["low"]:
        raise UsageError(f"{name} must be >= {meta['low']:g}; got {value!r}")
    if meta.get("high") is not None and value > meta["high"]:
        raise UsageError(f"{name} must be <= {meta['high']:g}; got {value!r}")
    if meta.get("above") is not None and value <= meta["above"]:
        raise UsageError(f"{name} must be > {meta['above']:g}; got {value!r}")


def check_kind(f: dataclasses.Field, value: Any, name: str) -> None:
    """A ValueError naming ``name`` unless ``value`` is of the field's kind (bool, int, float, str)."""
    kind = _kind(f.type)
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        what = {int: "a whole number", float: "a finite number", str: "a name", bool: "true or false"}[kind]
        raise UsageError(f"{name} must be {what}; got {value!r}")


ORDERS = ("confidence", "margin", "entropy", "random")  # remasking orders (most confident first, ...)
# the orders that are a function of the canvas alone (not of the draws): DUEL's exact likelihood
# (evaluation/duel.py) is the probability of a text under a sampler with one of them
DETERMINISTIC_ORDERS = ("top-prob", "left-to-right", "margin", "entropy")


@dataclass
class AncestralOptions(Options):
    cache: bool = option(True, "skip the network when no token changed (masked, not time-conditioned)", cli=False)


@dataclass
class RemaskingOptions(Options):
    schedule: str = option("linear", "tokens revealed per step: an even share, MaskGIT's cosine, or Dream's count",
                           choices=("linear", "cosine", "dream"))


@dataclass
class ReMDMOptions(Options):
    eta: float = option(0.04, "cap on the re-mask probability", low=0.0, high=1.0)


@dataclass
class SemiAutoregressiveOptions(Options):
    block_length: int = option(32, "tokens per block", low=1)
    order: str = option("confidence", "which masked tokens of a block to reveal first", choices=ORDERS)


@dataclass
class ThresholdOptions(Options):
    block_length: int = option(32, "tokens per block", low=1)
    threshold: float = option(0.9, "confidence to reveal a token (above 1: one token per step)", above=0.0)
    kv_cache: str = option("dual", "approximate KV cache, refreshed once per block", choices=("none", "prefix", "dual"))


@dataclass
class BlockOptions(Options):
    order: str = option("ancestral", "steps inside a block", choices=("ancestral", "confidence"))
    kv_cache: str = option("exact", "the exact KV cache of finished blocks", choices=("exact", "none"))
    threshold: float = option(0.0, "with --order confidence, also every token above this probability "
                                   "(Fast-dLLM inside the blocks); 0 = off", low=0.0)


@dataclass
class SpeculativeOptions(Options):
    draft: str = option("", "the masked or block diffusion run (or model directory) that drafts for the AR model",
                        request=False)
    draft_len: int = option(8, "tokens drafted per round (K)", low=1)
    draft_steps: int = option(1, "drafter calls per round: left-to-right chunks of the draft", low=1)
    draft_confidence: float = option(0.0, "end a round's draft at the first position where the drafter's top "
                                     "probability is below this (0: always K)", low=0.0, high=1.0)
    draft_run: object = option(None, "a loaded drafter (a run or Pipeline) instead of --draft", cli=False,
                               request=False)


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    fits: tuple[str, ...]  # the processes whose models it samples
    doc: str  # one line
    target: str  # "module:Class", relative to this package
    options: type[Options] = Options
    fixed: dict = field(default_factory=dict)  # constructor arguments this name implies
    stops_at_eot: bool = False  # takes eot_id: ends early once every row has produced end-of-text
    starts_documents: bool = False  # takes bos_id: an unprompted sample starts after end-of-text
    takes_tokenizer: bool = False  # checks it against a second model's (the speculative drafter's)

    def load(self) -> type:
        module, cls = self.target.split(":")
        return getattr(importlib.import_module(module, __package__), cls)


DIFFUSE = ("masked", "uniform", "sedd-absorb", "sedd-uniform")
# absorbing processes whose network gives p(x0 | x_t) at masked positions (SEDD's absorbing scores
# normalise to it): the remasking and blockwise samplers need nothing else
ABSORBING = ("masked", "sedd-absorb")
JUMP = ("uniform", "sedd-absorb", "sedd-uniform")
SAMPLERS: dict[str, SamplerSpec] = {s.name: s for s in (
    SamplerSpec("ancestral", DIFFUSE, "the reverse process (analytic for SEDD)", ".ancestral:AncestralSampler",
                AncestralOptions),
    *(SamplerSpec(name, ABSORBING, doc, ".remasking:RemaskingSampler", RemaskingOptions, {"strategy": name})
      for name, doc in (("confidence", "most confident tokens first, an even share per step"),
                        ("margin", "largest top-1/top-2 probability gap first"),
                        ("entropy", "lowest-entropy positions first"),
                        ("random", "a random order, an even share per step"),
                        ("top-prob", "highest top-1 probability first (a fixed order: DUEL's confidence)"),
                        ("left-to-right", "leftmost masked positions first, an even share per step"))),
    SamplerSpec("remdm", ("masked",), "ReMDM: ancestral steps that may re-mask decoded tokens (--eta)",
                ".remasking:ReMDMSampler", ReMDMOptions),
    SamplerSpec("semi-ar", ABSORBING, "blocks left to right (--block-length), remasking inside each (--order)",
                ".blocks:SemiAutoregressiveSampler", SemiAutoregressiveOptions, stops_at_eot=True),
    SamplerSpec("threshold", ABSORBING, "Fast-dLLM: blocks, all tokens above --threshold per step, --kv-cache",
                ".blocks:ThresholdSampler", ThresholdOptions, stops_at_eot=True),
    SamplerSpec("block", ("block",), "block diffusion with an exact KV cache of finished blocks",
                ".blocks:BlockDiffusionSampler", BlockOptions, stops_at_eot=True),
    SamplerSpec("euler", JUMP, "first-order (Euler / tau-leaping) steps", ".ancestral:EulerSampler"),
    SamplerSpec("tau-leaping", JUMP, "the same as euler (one jump per token)", ".ancestral:TauLeapingSampler"),
    SamplerSpec("ddpm", ("gaussian",), "Gaussian ancestral steps, then rounding", ".continuous:ContinuousSampler"),
    SamplerSpec("ddim", ("gaussian",), "Gaussian deterministic steps (fewer steps), then rounding",
                ".continuous:DDIMSampler"),
    SamplerSpec("ar", ("ar",), "left to right with a KV cache (the AR twin)", ".autoregressive:AutoregressiveSampler",
                starts_documents=True),
    SamplerSpec("speculative", ("ar",), "the AR twin's own outputs, drafted --draft-len at a time by a diffusion "
                "model (--draft) and verified in one call", ".speculative:SpeculativeSampler", SpeculativeOptions,
                starts_documents=True, takes_tokenizer=True),
)}

# each process's own sampler: what a run uses when no sampler is named
DEFAULTS = {"masked": "ancestral", "uniform": "ancestral", "sedd-absorb": "ancestral", "sedd-uniform": "ancestral",
            "gaussian": "ddpm", "block": "block", "ar": "ar"}

BASE = tuple(f.name for f in dataclasses.fields(Options))  # temperature, top_k, top_p


def spec(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r} (choose {', '.join(SAMPLERS)})")
    return SAMPLERS[name]


def option_fields() -> dict[str, list[tuple[SamplerSpec, dataclasses.Field]]]:
    """Every sampler-specific option name -> the samplers that take it, with their field."""
    out: dict[str, list] = {}
    for s in SAMPLERS.values():
        for f in s.options.own_fields():
            out.setdefault(f.name, []).append((s, f))
    return out


def option_names(cli_only: bool = False, requests: bool = False) -> tuple[str, ...]:
    """The sampler-specific option names (block_length, order, ...), in table order: all of them,
    those the command line takes (``cli_only``), or those a server's request may set (``requests``)."""
    return tuple(name for name, uses in option_fields().items()
                 if (not cli_only or uses[0][1].metadata["cli"]) and (not requests or uses[0][1].metadata["request"]))


def option_field(name: str) -> dataclasses.Field:
    """The field of option ``name``: the shared one, or the first sampler's that takes it (its
    type is the same in every sampler; ranges may differ, which ``make_options`` checks)."""
    if name in BASE:
        return next(f for f in dataclasses.fields(Options) if f.name == name)
    return option_fields()[name][0][1]


def option_kind(name: str) -> type:
    """The Python type of option ``name`` (the same in every sampler that takes it)."""
    return _kind(option_field(name).type)


def option_help(name: str) -> str:
    """``--help`` text of a sampler option: per sampler (grouped when they agree), its doc,
    choices and default."""
    parts: list[tuple[list[str], str]] = []
    for s, f in option_fields()[name]:
        choices = "|".join(f.metadata["choices"])
        text = f"{f.metadata['doc']}" + (f": {choices}" if choices else "") + f" (default {f.default})"
        for names, other in parts:
            if other == text:
                names.append(s.name)
                break
        else:
            parts.append(([s.name], text))
    return "; ".join(f"{', '.join(names)}: {text}" for names, text in parts)


def make_options(name: str, given: dict) -> Options:
    """The ``Options`` of sampler ``name`` from ``given`` settings (None = unset: the default).
    A setting the sampler does not take is an error naming it."""
    s = spec(name)
    fields = {f.name for f in dataclasses.fields(s.options)}
    extra = {k: v for k, v in given.items() if v is not None}
    unused = sorted(set(extra) - fields)
    if unused:
        raise UsageError(f"the {name} sampler takes no {', '.join(unused)} option")
    return s.options(**extra)


def check_fits(name: str, process: str) -> None:
    fits = spec(name).fits
    if process not in fits:
        raise UsageError(f"the {name} sampler needs a {' or '.join(fits)} model; this run is {process!r} "
                         f"(its default sampler is {DEFAULTS[process]})")


def build_sampler(name: str | None, process, tokenizer, **options):
    """The sampler ``name`` (default: the process's own) for a run, configured by ``options``
    (None = unset: the sampler's default). ``eot_id``: stop once every row has produced it, for
    the samplers that can (the others ignore it)."""
    name = name or DEFAULTS[process.name]
    s = spec(name)
    check_fits(name, process.name)
    eot_id = options.pop("eot_id", None)
    opts = make_options(name, options)
    context: dict[str, Any] = {"banned_ids": tokenizer.banned_ids}  # never text
    if s.stops_at_eot and eot_id is not None:
        context["eot_id"] = eot_id
    if s.starts_documents:
        context["bos_id"] = tokenizer.eot_id
    if s.takes_tokenizer:
        context["tokenizer"] = tokenizer
    # shallow: asdict() would deep-copy an object option (a drafter's whole model, per request)
    given = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    return s.load()(**given, **s.fixed, **context)


def markdown_table() -> str:
    """The README's sampler table."""
    rows = ["| sampler | fits | what it does | options (default) |", "|---|---|---|---|"]
    for s in SAMPLERS.values():
        opts = ", ".join(f"`{flag(f.name)}` ({f.default})" for f in s.options.own_fields() if f.metadata["cli"])
        rows.append(f"| `{s.name}` | {', '.join(s.fits)} | {s.doc} | {opts or '-'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
