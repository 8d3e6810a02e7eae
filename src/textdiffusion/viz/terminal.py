"""Watch text emerge from noise in the terminal: drawn from trace-format-v1 frames
(sampling/trace.py), live as a ``TraceRecorder`` records them or replayed from a saved trace,
the first row after every step. Masked positions show as a dim block, tokens decided in this step are
bold green, the prompt (and other fixed text) is plain. On a terminal the view is redrawn in
place; piped, every step is printed on its own line (``step i/N | text``), masks as the glyph.
"""

from __future__ import annotations

import re
import shutil
import sys
import time

from ..tokenizers import MASK_GLYPH

DIM, NEW, RESET = "\x1b[2m", "\x1b[1;32m", "\x1b[0m"
_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def screen_rows(text: str, columns: int) -> int:
    """Terminal rows ``text`` takes at ``columns`` wide: each line wraps every ``columns``
    visible characters (colour codes take none)."""
    return sum(max(1, -(-len(_ESCAPE.sub("", line)) // columns)) for line in text.split("\n"))


class TerminalWatch:
    """Draws trace frames: ``TraceRecorder(mask_id, rows=1, on_frame=TerminalWatch(tok, steps))``
    as the sampler's hook, or ``TerminalWatch(tok, steps).play(trace)`` for a saved trace."""

    def __init__(self, tokenizer, steps: int, stream=None, delay: float = 0.0, interactive: bool | None = None,
                 columns: int | None = None):
        self.tok, self.steps, self.delay = tokenizer, steps, delay
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.columns = columns or shutil.get_terminal_size(fallback=(80, 24)).columns
        self._lines = 0

    def piece(self, token: int) -> str:
        return MASK_GLYPH if token == self.tok.mask_id or token < 0 else self.tok.decode([token])

    def render(self, tokens: list[int], changed: set[int]) -> str:
        """The row as colored text: masks dim, this step's tokens (positions ``changed``) bold green."""
        out = []
        for position, token in enumerate(tokens):
            text = self.piece(token)
            if token == self.tok.mask_id or token < 0:
                out.append(f"{DIM}{text}{RESET}")
            elif position in changed:
                out.append(f"{NEW}{text}{RESET}")
            else:
                out.append(text)
        return "".join(out)

    def __call__(self, frame: dict) -> None:
        """Draw one trace frame (its first row)."""
        row, i = frame["rows"][0], frame["step"]
        tokens = row["tokens"]
        if not self.interactive:
            text = "".join(self.piece(t) for t in tokens).replace("\n", "\\n")
            print(f"step {i + 1}/{self.steps} | {text}", file=self.stream, flush=True)
            return
        view = f"step {i + 1}/{self.steps}\n{self.render(tokens, set(row['changed']))}"
        self._clear()
        self.stream.write(view + "\n")
        self.stream.flush()
        self._lines = screen_rows(view, self.columns)  # rows on screen, wrapped lines included
        if self.delay:
            time.sleep(self.delay)

    def play(self, trace: dict) -> None:
        """Replay a saved trace (``textdiffusion.trace/1``), one frame per ``delay`` seconds."""
        for frame in trace["frames"]:
            self(frame)
        self.finish()

    def _clear(self) -> None:
        if self._lines:
            self.stream.write(f"\x1b[{self._lines}F\x1b[J")  # back to the top of the last view, clear it
            self._lines = 0

    def finish(self) -> None:
        """After the last step: the live view gives way to the final text the command prints
        (which would otherwise stand on the screen twice)."""
        if self.interactive:
            self._clear()
            self.stream.write(f"step {self.steps}/{self.steps}: done\n")
            self.stream.flush()
