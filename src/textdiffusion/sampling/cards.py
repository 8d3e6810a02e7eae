"""A model card's sampling settings: the ``generate`` (and ``infill``) sections of a shipped
model's card.json (``runs/shipped.py`` reads it), or a public model family's defaults, checked
against the samplers' own options, and how one call's settings are completed from them.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from ..runs.shipped import read_card, shipped_models


def available() -> dict[str, dict]:
    """Shipped name -> a short description (from its config and card.json)."""
    out = {}
    for name, d in shipped_models().items():
        out[name] = {**card(d), "path": str(d)}
    return out


BASE_DEFAULTS = {"steps": 64, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


def _settings() -> tuple[str, ...]:
    from .registry import option_names

    return ("sampler", *BASE_DEFAULTS, *option_names(cli_only=True))


def check_settings(settings: dict, where: str) -> dict:
    """Known keys with values of the right kind (a card is edited by hand), else a ValueError;
    with a sampler named, its options are checked as the sampler checks them (sampling/registry.py)."""
    from .registry import SAMPLERS, check_kind, make_options, option_field, options_named

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
    """A model folder's card (``runs.shipped.read_card``), its settings checked as the samplers
    check theirs (a card.json is edited by hand; a public family's defaults are ours)."""
    data = read_card(folder)
    path = Path(folder) / "card.json"
    if path.is_file():
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


