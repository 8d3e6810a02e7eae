"""Models shipped inside the package (trained by this project's own CLI; see MODEL_CARD.md).

Each is a folder here holding what ``Pipeline.save_pretrained`` writes (config.json,
tokenizer.json, checkpoint/model.safetensors) and a card.json: a one-line ``description``, the
``generate`` settings (sampler, steps, temperature, ...) the model was measured with, used when a
call does not name its own, and optionally ``infill`` settings for filling holes (else the
``generate`` ones). ``resolve(name_or_dir)`` maps a shipped name to its folder and passes
any other path through.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError

HERE = Path(__file__).resolve().parent
DEFAULT = "english"


def available() -> dict[str, dict]:
    """Shipped name -> a short description (from its config and card.json)."""
    out = {}
    for d in sorted(HERE.iterdir()):
        if (d / "config.json").exists():
            out[d.name] = {**card(d), "path": str(d)}
    return out


BASE_DEFAULTS = {"steps": 64, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


def _settings() -> tuple[str, ...]:
    from ..sampling.registry import option_names

    return ("sampler", *BASE_DEFAULTS, *option_names(cli_only=True))


def check_settings(settings: dict, where: str) -> dict:
    """Known keys with values of the right kind (a card is edited by hand), else a ValueError;
    with a sampler named, its options are checked as the sampler checks them (sampling/registry.py)."""
    from ..sampling.registry import SAMPLERS, check_kind, make_options, option_field, options_named

    if not isinstance(settings, dict):
        raise UsageError(f"{where}: the generate settings must be a JSON object")
    known = _settings()
    for key, value in settings.items():
        if key not in known:
            raise UsageError(f"{where}: unknown setting {key!r} (known: {', '.join(known)})")
        if key == "sampler" and not isinstance(value, str):
            raise UsageError(f"{where}: sampler must be a name; got {value!r}")
        if key == "steps" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UsageError(f"{where}: steps must be a whole number >= 1; got {value!r}")
        if key not in ("sampler", "steps"):
            try:
                check_kind(option_field(key), value, key)  # ranges and choices: per sampler, below
            except ValueError as exc:
                raise UsageError(f"{where}: {exc}") from None
    name = settings.get("sampler")
    if name is not None:
        if name not in SAMPLERS:
            raise UsageError(f"{where}: unknown sampler {name!r} (choose {', '.join(SAMPLERS)})")
        try:
            with options_named("name"):  # a card's keys, as written there
                make_options(name, {k: v for k, v in settings.items() if k not in ("sampler", "steps")})
        except ValueError as exc:
            raise UsageError(f"{where}: {exc}") from None
    return settings


def card(folder: str | Path) -> dict:
    """A model folder's card.json (empty for run directories and saved pipelines without one; a
    public model's directory gets its family's sampling defaults, models/adapters)."""
    path = Path(folder) / "card.json"
    if not path.is_file():
        from ..models.adapters import card_for

        return card_for(folder) if Path(folder).is_dir() else {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"cannot read {path}: not a JSON object")
    for task in TASKS:
        check_settings(data.get(task, {}), f"{path} ({task})")
    return data


TASKS = ("generate", "infill")  # the card sections of sampling settings


def task_defaults(data: dict, task: str = "generate") -> dict:
    """A card's settings for ``task``: its ``infill`` section for holes when it has one, else
    its ``generate`` settings."""
    return dict(data.get(task) or data.get("generate", {}))


def generation_defaults(folder: str | Path, task: str = "generate") -> dict:
    """The sampling settings a model's card recommends for ``task`` ("generate" or "infill"),
    e.g. {"sampler": "confidence", "steps": 32}."""
    return task_defaults(card(folder), task)


def fill_settings(given: dict, defaults: dict) -> dict:
    """``given`` sampling settings (None = unset) completed from a card's ``defaults``, then from
    BASE_DEFAULTS. The card's steps, temperature, top_k and top_p fill in whatever sampler is
    used; its sampler-specific options (threshold, block_length, ...) only when the card names
    a sampler and that sampler is the one used."""
    out = dict(given)
    for name, value in BASE_DEFAULTS.items():
        if out.get(name) is None:
            out[name] = defaults.get(name, value)
    if out.get("sampler") is None:
        out["sampler"] = defaults.get("sampler")
    if defaults.get("sampler") is not None and out["sampler"] == defaults["sampler"]:
        for name, value in defaults.items():
            if name not in BASE_DEFAULTS and name != "sampler" and out.get(name) is None:
                out[name] = value
    return out


def call_settings(steps: int | None, sampler: str | None, options: dict, defaults: dict) -> tuple[int, str | None, dict]:
    """(steps, sampler, options) of one generate call: what it gives, the rest from a card's
    ``defaults`` (``fill_settings``)."""
    out = fill_settings({**options, "steps": steps, "sampler": sampler}, defaults)
    return out.pop("steps"), out.pop("sampler"), out


def resolve(name_or_dir: str | Path | None) -> Path:
    """The folder of a shipped model name (default: the English model), or the given path."""
    name = DEFAULT if name_or_dir is None else str(name_or_dir)
    shipped = available()
    if name in shipped:
        return Path(shipped[name]["path"])
    path = Path(name)
    if path.exists() or name_or_dir is not None and ("/" in name or name.startswith(".")):
        return path
    names = ", ".join(shipped) or "none are installed yet"
    raise FileNotFoundError(f"no model named {name!r} (shipped models: {names}); pass a run directory")
