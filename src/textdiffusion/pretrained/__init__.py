"""Models shipped inside the package (trained by this project's own CLI; see MODEL_CARD.md).

Each is a folder here holding what ``Pipeline.save_pretrained`` writes (config.json,
tokenizer.json, checkpoint/model.safetensors). ``resolve(name_or_dir)`` maps a shipped name to its
folder and passes any other path through.
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
            card = json.loads((d / "card.json").read_text()) if (d / "card.json").exists() else {}
            out[d.name] = {"path": str(d), **card}
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
