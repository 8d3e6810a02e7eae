"""Files written so that a kill, a full disk or a crash mid-write never loses what was there:
the new content goes to a temporary file beside the old one, is flushed to disk, and replaces
it in one rename (no torch here: configs and tokenizers are saved with it)."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: str | Path, text: str) -> None:
    """Replace ``path``'s content all at once: after a failure the old file is still whole."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
