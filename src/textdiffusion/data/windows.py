"""Training and evaluation windows over a token array: random windows (optionally in
fill-in-the-middle order for the AR twin, or as infilling examples for diffusion), and the
non-overlapping windows that tile an evaluation split."""


from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError


def fim_order(window: np.ndarray, i: int, j: int, bos: int, suf: int, mid: int) -> np.ndarray:
    """Fill-in-the-middle (Bavarian et al. 2022, PSM order): window = prefix + middle + suffix cut
    at i <= j, rearranged as [bos] prefix [suf] suffix [mid] middle (three tokens longer). The AR
    twin uses end-of-text, pad and mask as the three sentinels (tokens that are never text)."""
    return np.concatenate([[bos], window[:i], [suf], window[j:], [mid], window[i:j]]).astype(np.int64)


class WindowSampler:
    """Random fixed-length windows from a token array, drawn with its own seeded generator.

    The generator's state is part of a checkpoint, so a resumed run sees the same batches. With
    ``fim`` = (rate, bos, suf, mid), that fraction of windows is put in fill-in-the-middle order
    (the AR twin). With ``span_rate``, that fraction of windows becomes an infilling example for
    a diffusion model: one span, cut like FIM's middle, is the target and the rest of the window is
    clean context; ``next`` then returns (tokens, fixed), fixed = the context (never noised, not
    scored), all False in the other windows.

    ``rows`` = (start, stop): one process's share of the batch when several train together
    (torchrun). Every process draws the whole batch (the same generator, the same state) and
    reads only its rows' windows, so the shares are disjoint and together the one-process batch.
    """

    def __init__(self, tokens: np.ndarray, length: int, batch_size: int, seed: int, split: str = "train",
                 fim: tuple[float, int, int, int] | None = None, span_rate: float = 0.0,
                 rows: tuple[int, int] | None = None):
        if len(tokens) < length + 1:
            raise DataError(
                f"the {split} split has {len(tokens)} tokens, fewer than one window of {length + 1}: "
                "use more data, a smaller model.context, or another data.val_fraction"
            )
        self.tokens = tokens
        self.length = length
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.fim = fim if fim and fim[0] > 0 else None
        self.span_rate = span_rate
        self.rows = slice(*rows) if rows is not None else slice(0, batch_size)

    def next(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, length + 1) int64: the extra token lets the AR twin predict ``length`` targets
        (with ``span_rate``: and the (B, length + 1) bool mask of fixed context)."""
        starts = torch.randint(0, len(self.tokens) - self.length, (self.batch_size,), generator=self.gen)
        own = self.rows
        rows = [np.asarray(self.tokens[s : s + self.length + 1], dtype=np.int64) for s in starts[own].tolist()]
        if self.fim is not None:
            rate, bos, suf, mid = self.fim
            n = self.length - 2  # three sentinels join the window
            u = torch.rand(self.batch_size, generator=self.gen)[own].tolist()
            cuts = torch.randint(0, n + 1, (self.batch_size, 2), generator=self.gen).sort(1).values[own].tolist()
            rows = [fim_order(r[:n], i, j, bos, suf, mid) if x < rate else r for r, x, (i, j) in zip(rows, u, cuts)]
        batch = torch.from_numpy(np.stack(rows))
        if self.span_rate > 0:
            return batch, self._span_context()[own]
        return batch

    def _span_context(self) -> torch.Tensor:
        """(B, length + 1) fixed-context mask: in a ``span_rate`` fraction of rows everything but
        one span [1 + i, 1 + j) of the scored positions, cut at two sorted uniform points as the
        FIM twin's middle is (at least one token long); position 0 (the AR twin's context token)
        is never scored by diffusion losses."""
        B, L = self.batch_size, self.length
        u = torch.rand(B, generator=self.gen)
        cuts = torch.randint(0, L + 1, (B, 2), generator=self.gen).sort(1).values
        i, j = cuts[:, 0], cuts[:, 1]
        i = torch.where(i == j, (j - 1).clamp(min=0), i)
        j = torch.maximum(j, i + 1)
        pos = torch.arange(L)[None, :]
        context = (pos < i[:, None]) | (pos >= j[:, None])
        fixed = torch.zeros(B, L + 1, dtype=torch.bool)
        fixed[:, 1:] = context & (u < self.span_rate)[:, None]
        return fixed


def eval_windows(tokens: np.ndarray, length: int, max_windows: int = 0) -> torch.Tensor:
    """Non-overlapping (N, length + 1) windows that tile the split; the first token of each
    window is context for the AR twin, the last ``length`` tokens are the ones scored."""
    n = (len(tokens) - 1) // length
    if n <= 0:
        raise DataError(f"evaluation split has {len(tokens)} tokens, fewer than one window of {length + 1} (the "
                        f"model's context + 1): give more text")
    if max_windows:
        n = min(n, max_windows)
    idx = np.arange(n)[:, None] * length + np.arange(length + 1)[None, :]
    return torch.from_numpy(np.asarray(tokens[: n * length + 1], dtype=np.int64)[idx])
