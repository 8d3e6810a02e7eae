"""Models shipped inside the package (trained by this project's own CLI; see MODEL_CARD.md), in
the package's ``pretrained/`` folder.

Each is a folder there holding what ``Pipeline.save_pretrained`` writes (config.json,
tokenizer.json, checkpoint/model.safetensors) and a card.json: a one-line ``description``, the
``generate`` settings (sampler, steps, temperature, ...) the model was measured with, used when a
call does not name its own, and optionally ``infill`` settings for filling holes (else the
``generate`` ones). ``resolve(name_or_dir)`` maps a shipped name to its folder and passes any
other path through; ``read_card`` reads a card as written (``sampling/cards.py`` checks its
settings against the samplers).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError

HERE = Path(__file__).resolve().parent.parent / "pretrained"
DEFAULT = "english"


def shipped_models() -> dict[str, Path]:
    """Shipped name -> its folder."""
    return {d.name: d for d in sorted(HERE.iterdir()) if (d / "config.json").exists()} if HERE.is_dir() else {}


def read_card(folder: str | Path) -> dict:
    """A model folder's card.json as written (empty for run directories and saved pipelines
    without one; a public model's directory gets its family's sampling defaults, runs/adapters).
    A card that is not a JSON object is refused in one line."""
    path = Path(folder) / "card.json"
    if not path.is_file():
        from .adapters import card_for

        return card_for(folder) if Path(folder).is_dir() else {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"cannot read {path}: not a JSON object")
    return data


def resolve(name_or_dir: str | Path | None) -> Path:
    """The folder of a shipped model name (default: the English model), or the given path."""
    name = DEFAULT if name_or_dir is None else str(name_or_dir)
    names = shipped_models()
    if name in names:
        return names[name]
    path = Path(name)
    if path.exists() or name_or_dir is not None and ("/" in name or name.startswith(".")):
        return path
    listed = ", ".join(names) or "none are installed yet"
    raise FileNotFoundError(f"no model named {name!r} (shipped models: {listed}); pass a run directory")
