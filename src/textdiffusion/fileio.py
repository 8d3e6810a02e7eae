"""Files read and written (no torch here: configs and tokenizers are saved with it). Text is read
as UTF-8, and a file that is not is one line naming it, its first bad byte and the fix. Files
are written so that a kill, a full disk or a crash mid-write never loses what was there: the new
content goes to a temporary file beside the old one, is flushed to disk, and replaces it in one
rename; every file gets the permissions the umask gives (safetensors' own are owner-only)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import TextDiffusionError

CONVERT = "iconv -f latin1 -t utf-8"  # the usual fix for a file that is not UTF-8 (Latin-1, Windows-1252)


def utf8_text(raw: bytes, where: str, error: type[TextDiffusionError] = TextDiffusionError) -> str:
    """``raw`` as UTF-8 text, its line ends read as a text file's are ("\\r\\n" and "\\r" become
    "\\n"; a leading byte-order mark, which Windows editors write, is not text), else ``error`` in
    one line naming ``where`` (a file, standard input), the first byte that is not UTF-8 and the
    fix: convert it (Latin-1, Windows-1252), or, with NUL bytes in it, give text instead of a
    binary file (or convert UTF-16)."""
    try:
        return raw.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        at = exc.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)  # utf-8-sig counts after the mark
        fix = (f"convert it to UTF-8 first, e.g. {CONVERT}" if b"\x00" not in raw else
               "it holds NUL bytes, so it is a binary (or UTF-16) file: give a UTF-8 text file (iconv -f utf-16 -t "
               "utf-8 converts UTF-16)")
        raise error(f"{where} is not UTF-8 text (byte 0x{raw[at]:02x} at offset {at}): {fix}") from None


def read_utf8(path: str | Path, error: type[TextDiffusionError] = TextDiffusionError) -> str:
    """A text file's content as UTF-8 (``utf8_text``), or a one-line ``error`` naming the file."""
    return utf8_text(Path(path).read_bytes(), str(path), error)


def umask_mode(path: str | Path) -> None:
    """Give ``path`` the permissions of any other file the user writes (0666 less the umask):
    safetensors creates its files readable by the owner only (0600), which locks other users out
    of a shared model or export."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


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
