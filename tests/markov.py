"""Data with a known answer: a Markov chain (first order by default, or of a higher order) whose
entropy rate is known exactly."""

from __future__ import annotations

import math

import numpy as np

from textdiffusion.tokenizers import CharTokenizer

ALPHABET = "abcdefgh"


class MarkovChain:
    """Token i drawn from P[context], the context being the ``order`` tokens before it (one row
    of P per context, rows from a Dirichlet of ``concentration``: small = peaked rows)."""

    def __init__(self, num_states: int = 8, concentration: float = 0.25, seed: int = 0, order: int = 1):
        rng = np.random.default_rng(seed)
        self.num_states, self.order = num_states, order
        contexts = num_states ** order
        self.P = rng.dirichlet(np.full(num_states, concentration), size=contexts)  # (V^k, V) rows sum to 1
        T = np.zeros((contexts, contexts))  # context -> context: drop the oldest token, append the new one
        for c in range(contexts):
            T[c, (c * num_states + np.arange(num_states)) % contexts] += self.P[c]
        evals, evecs = np.linalg.eig(T.T)
        pi = np.real(evecs[:, np.argmin(np.abs(evals - 1))])
        self.pi = pi / pi.sum()  # stationary distribution of the contexts (order 1: of the states)

    def entropy_rate_bits(self) -> float:
        """h = sum_c pi_c H(P_c): the per-token entropy given the previous ``order`` tokens."""
        rows = [-(p[p > 0] * np.log2(p[p > 0])).sum() for p in self.P]
        return float(self.pi @ np.array(rows))

    def window_entropy_bits(self, length: int) -> float:
        """Per-token entropy of a window of ``length`` tokens with no context:
        (H(pi) + (L - k) h) / L, pi over the first k = ``order`` tokens."""
        pi = self.pi[self.pi > 0]
        h_pi = float(-(pi * np.log2(pi)).sum())
        return (h_pi + (length - self.order) * self.entropy_rate_bits()) / length

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        V, k = self.num_states, self.order
        cdf = np.cumsum(self.P, axis=1)
        out = np.empty(n, dtype=np.int64)
        c = int(rng.choice(len(self.pi), p=self.pi))  # the first k tokens, from the stationary distribution
        out[:k] = [(c // V ** (k - 1 - j)) % V for j in range(k)]
        u = rng.random(n)
        for i in range(k, n):
            out[i] = min(int(np.searchsorted(cdf[c], u[i])), V - 1)
            c = (c * V + int(out[i])) % len(self.pi)
        return out

    def bigram_tv(self, sequences: list[list[int]]) -> float:
        """(First order.) Mean total-variation distance between the empirical transition rows of ``sequences``
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
        """(First order.) Mean -log2 P(b | a) under the true chain over the transitions of ``sequences``
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
