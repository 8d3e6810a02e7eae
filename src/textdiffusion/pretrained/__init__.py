"""Models shipped inside the package (trained by this project's own CLI; see MODEL_CARD.md).

Each is a folder here holding what ``Pipeline.save_pretrained`` writes (config.json,
tokenizer.json, checkpoint/model.safetensors) and a card.json: a one-line ``description`` and the
``generate`` settings (sampler, steps, temperature, ...) the model was measured with, used when a
call does not name its own. ``resolve(name_or_dir)`` maps a shipped name to its folder and passes
any other path through.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT = "english"


def available() -> dict[str, dict]:
    """Shipped name -> a short description (from its config and card.json)."""
    out = {}
    for d in sorted(HERE.iterdir()):
        if (d / "config.json").exists():
            out[d.name] = {"path": str(d), **card(d)}
    return out


def card(folder: str | Path) -> dict:
    """A model folder's card.json (empty for run directories and saved pipelines without one)."""
    path = Path(folder) / "card.json"
    return json.loads(path.read_text()) if path.is_file() else {}


BASE_DEFAULTS = {"steps": 64, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


def generation_defaults(folder: str | Path) -> dict:
    """The sampling settings a model's card recommends (e.g. {"sampler": "confidence", "steps": 32})."""
    return dict(card(folder).get("generate", {}))


def fill_settings(given: dict, defaults: dict) -> dict:
    """``given`` sampling settings (None = unset) completed from a card's ``defaults``, then from
    BASE_DEFAULTS. The card's sampler-specific options (threshold, block_length, ...) apply only
    when its sampler is the one used."""
    out = dict(given)
    for name, value in BASE_DEFAULTS.items():
        if out.get(name) is None:
            out[name] = defaults.get(name, value)
    if out.get("sampler") is None:
        out["sampler"] = defaults.get("sampler")
    if out["sampler"] == defaults.get("sampler"):
        for name, value in defaults.items():
            if name not in BASE_DEFAULTS and name != "sampler" and out.get(name) is None:
                out[name] = value
    return out


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
