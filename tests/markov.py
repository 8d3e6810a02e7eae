"""Data with a known answer: a first-order Markov chain whose entropy rate is known exactly."""

from __future__ import annotations

import math

import numpy as np

from textdiffusion.tokenizers import CharTokenizer

ALPHABET = "abcdefgh"


class MarkovChain:
    def __init__(self, num_states: int = 8, concentration: float = 0.25, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.P = rng.dirichlet(np.full(num_states, concentration), size=num_states)  # (V, V) rows sum to 1
        evals, evecs = np.linalg.eig(self.P.T)
        pi = np.real(evecs[:, np.argmin(np.abs(evals - 1))])
        self.pi = pi / pi.sum()  # stationary distribution
        self.num_states = num_states

    def entropy_rate_bits(self) -> float:
        """h = sum_i pi_i H(P_i): the per-token entropy given the previous token."""
        rows = [-(p[p > 0] * np.log2(p[p > 0])).sum() for p in self.P]
        return float(self.pi @ np.array(rows))

    def window_entropy_bits(self, length: int) -> float:
        """Per-token entropy of a window of ``length`` tokens with no context: (H(pi) + (L-1) h) / L."""
        h_pi = float(-(self.pi * np.log2(self.pi)).sum())
        return (h_pi + (length - 1) * self.entropy_rate_bits()) / length

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        cdf = np.cumsum(self.P, axis=1)
        out = np.empty(n, dtype=np.int64)
        out[0] = rng.choice(self.num_states, p=self.pi)
        u = rng.random(n)
        for i in range(1, n):
            out[i] = min(int(np.searchsorted(cdf[out[i - 1]], u[i])), self.num_states - 1)
        return out

    def bigram_tv(self, sequences: list[list[int]]) -> float:
        """Mean total-variation distance between the empirical transition rows of ``sequences``
        and the true ones, weighted by how often each state occurs (ignores non-state tokens)."""
        counts = np.zeros((self.num_states, self.num_states))
        for seq in sequences:
            for a, b in zip(seq[:-1], seq[1:]):
                if a < self.num_states and b < self.num_states:
                    counts[a, b] += 1
        rows = counts.sum(1)
        if rows.sum() == 0:
            return 1.0
        emp = counts / np.maximum(rows[:, None], 1)
        tv = 0.5 * np.abs(emp - self.P).sum(1)
        return float((rows * tv).sum() / rows.sum())

    def transition_bits(self, sequences: list[list[int]]) -> float:
        """Mean -log2 P(b | a) under the true chain over the transitions of ``sequences``
        (a transition touching a non-state token counts as a fixed 10-bit penalty)."""
        total, n = 0.0, 0
        for seq in sequences:
            for a, b in zip(seq[:-1], seq[1:]):
                ok = a < self.num_states and b < self.num_states and self.P[a, b] > 0
                total += -math.log2(self.P[a, b]) if ok else 10.0
                n += 1
        return total / max(n, 1)


def tokenizer() -> CharTokenizer:
    return CharTokenizer(list(ALPHABET))


def bits(nats: float) -> float:
    return nats / math.log(2)
