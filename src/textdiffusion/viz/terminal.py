"""Watch text emerge from noise in the terminal: the sampler's per-step hook redraws the first
sample after every step. Masked positions show as a dim block, tokens decided in this step are
bold green, the prompt (and other fixed text) is plain. On a terminal the view is redrawn in
place; piped, every step is printed on its own line (``step i/N | text``), masks as the glyph.
"""

from __future__ import annotations

import re
import shutil
import sys
import time

from ..sampling.base import StepOutput
from ..tokenizers import MASK_GLYPH

DIM, NEW, RESET = "\x1b[2m", "\x1b[1;32m", "\x1b[0m"
_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def screen_rows(text: str, columns: int) -> int:
    """Terminal rows ``text`` takes at ``columns`` wide: each line wraps every ``columns``
    visible characters (colour codes take none)."""
    return sum(max(1, -(-len(_ESCAPE.sub("", line)) // columns)) for line in text.split("\n"))


class TerminalWatch:
    """``on_step`` hook for a sampler: ``sampler.generate(..., on_step=TerminalWatch(tok, steps))``."""

    def __init__(self, tokenizer, steps: int, stream=None, delay: float = 0.0, interactive: bool | None = None,
                 columns: int | None = None):
        self.tok, self.steps, self.delay = tokenizer, steps, delay
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.columns = columns or shutil.get_terminal_size(fallback=(80, 24)).columns
        self._lines = 0

    def piece(self, token: int) -> str:
        return MASK_GLYPH if token == self.tok.mask_id else self.tok.decode([token])

    def render(self, tokens: list[int], changed: list[bool]) -> str:
        """The row as colored text: masks dim, this step's tokens bold green."""
        out = []
        for token, new in zip(tokens, changed):
            text = self.piece(token)
            if token == self.tok.mask_id:
                out.append(f"{DIM}{text}{RESET}")
            elif new:
                out.append(f"{NEW}{text}{RESET}")
            else:
                out.append(text)
        return "".join(out)

    def __call__(self, i: int, out: StepOutput) -> None:
        tokens, changed = out.x_prev[0].tolist(), out.changed[0].tolist()
        if not self.interactive:
            text = "".join(self.piece(t) for t in tokens).replace("\n", "\\n")
            print(f"step {i + 1}/{self.steps} | {text}", file=self.stream, flush=True)
            return
        view = f"step {i + 1}/{self.steps}\n{self.render(tokens, changed)}"
        self._clear()
        self.stream.write(view + "\n")
        self.stream.flush()
        self._lines = screen_rows(view, self.columns)  # rows on screen, wrapped lines included
        if self.delay:
            time.sleep(self.delay)

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
