"""The exact denoiser of a known Markov chain, and the exact law it lets a sampler be checked
against ("Is Your Diffusion Sampler Actually Correct?", arXiv:2602.19619).

Data: sequences of ``L`` tokens from a first-order ``MarkovChain`` (tests/markov.py), started
from its stationary distribution: P(x_1..x_L) = pi(x_1) prod_i P(x_i, x_{i+1}). With few states
and short sequences the whole joint law is a small table (``joint_law``).

``ExactDenoiser`` stands in for the network: under masking (absorbing) noise an unmasked token is
an exact copy of x0, so the true p(x0_i | x_t) at a masked position i is the chain's conditional
of x_i given the unmasked positions, computed by forward-backward; at an unmasked position it is
one-hot on the token there. It is called exactly like the project's ``Transformer``
(``model(x, t, attn_mask=...)`` -> (B, T, V) logits; ``model.cfg`` a real ``ModelConfig``; one
parameter, for the device), so a sampler run with it samples the chain's law exactly when (and
only when) the sampler itself is correct: whatever error remains is the sampler's.

``tv_to_law`` compares a sampler's N samples to the exact law; ``reference_tv`` is what N true
samples of the chain score (mean and SD over independent draws): the sampling noise a correct
sampler must stay within.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from markov import MarkovChain, tokenizer
from torch import nn

from textdiffusion.config import ModelConfig, ProcessConfig
from textdiffusion.processes.registry import PROCESSES

NEG = float("-inf")  # the logit of a token the denoiser never predicts


def masked_process(tok=None, schedule: str = "loglinear"):
    """The masked process exactly as a run builds it (processes/registry.py), over ``tok``'s ids
    (its mask id is the absorbing state)."""
    tok = tok or tokenizer()
    return PROCESSES["masked"].load().from_config(ProcessConfig(name="masked", schedule=schedule), tok)


class ExactDenoiser(nn.Module):
    """p(x0 | x_t) of a masked process over a first-order Markov chain, exactly.

    The chain's states are token ids 0..S-1; every other id (the other letters, end-of-text, the
    mask, padding, unknown) gets logit -inf. A position holding the mask id is unobserved; every
    other position is observed and must hold a state. Positions the attention mask ``attn_mask``
    marks as padding (right padding, ``padded_call``) are unobserved too, which leaves the
    posteriors of the real positions exactly as they are (an unobserved future sums to 1)."""

    def __init__(self, chain: MarkovChain, vocab_size: int, mask_id: int, context: int = 64):
        super().__init__()
        if chain.order != 1:
            raise ValueError("the exact denoiser is for first-order chains")
        self.num_states, self.vocab_size, self.mask_id = chain.num_states, vocab_size, mask_id
        if mask_id < self.num_states:
            raise ValueError("the mask id must not be a state of the chain")
        # a real config: samplers read cfg.context, cfg.reads_time (False: no time input) and the
        # memory check reads the sizes; the network itself is the table below
        self.cfg = ModelConfig(n_layer=1, n_head=1, d_model=2, context=context, vocab_size=vocab_size,
                               time_cond=False)
        self.register_buffer("P", torch.tensor(chain.P, dtype=torch.float64))
        self.register_buffer("pi", torch.tensor(chain.pi, dtype=torch.float64))
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # next(model.parameters()): the device
        self.calls = 0  # forward passes (one per batched network call)

    def posterior(self, tokens: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        """(B, T, S) p(x_i | the observed positions) by forward-backward, rescaled at every
        position (float64). Observed positions must hold states."""
        B, T = tokens.shape
        S = self.num_states
        if bool((observed & ((tokens < 0) | (tokens >= S))).any()):
            bad = tokens[observed & ((tokens < 0) | (tokens >= S))].unique().tolist()
            raise ValueError(f"an observed position holds {bad}, which is not a state of the chain")
        evidence = torch.ones(B, T, S, dtype=torch.float64, device=tokens.device)
        onehot = torch.nn.functional.one_hot(tokens.clamp(0, S - 1), S).double()
        evidence = torch.where(observed[..., None], onehot, evidence)
        fwd = torch.empty_like(evidence)
        bwd = torch.empty_like(evidence)
        a = self.pi.expand(B, S) * evidence[:, 0]
        fwd[:, 0] = a = a / a.sum(-1, keepdim=True)
        for i in range(1, T):
            a = (a @ self.P) * evidence[:, i]
            fwd[:, i] = a = a / a.sum(-1, keepdim=True)
        b = torch.ones(B, S, dtype=torch.float64, device=tokens.device)
        bwd[:, T - 1] = b
        for i in range(T - 2, -1, -1):
            b = (evidence[:, i + 1] * b) @ self.P.T
            bwd[:, i] = b = b / b.sum(-1, keepdim=True)
        post = fwd * bwd
        post = post / post.sum(-1, keepdim=True)
        if not bool(torch.isfinite(post).all()):  # 0 / 0: the observed tokens have probability zero
            raise ValueError("the unmasked tokens of a row are impossible under the chain")
        return post

    def forward(self, tokens: torch.Tensor, t: torch.Tensor | None = None, *, attn_mask: torch.Tensor | None = None,
                kv_cache=None, positions=None, labels=None) -> torch.Tensor:
        if kv_cache is not None or positions is not None or labels is not None:
            raise NotImplementedError("the exact denoiser reads whole sequences only (no KV cache, positions, labels)")
        self.calls += 1
        observed = tokens != self.mask_id
        if attn_mask is not None:  # (B, T, T): key j is a real position of row b where attn_mask[b, :, j]
            observed = observed & attn_mask.any(1)
        post = self.posterior(tokens, observed)
        logits = torch.full((*tokens.shape, self.vocab_size), NEG, dtype=torch.float64, device=tokens.device)
        logits[..., : self.num_states] = post.log()  # log 0 = -inf: an impossible state is never drawn
        return logits


# the exact law and distances to it -----------------------------------------------------------
def joint_law(chain: MarkovChain, length: int) -> np.ndarray:
    """(S ** L,) P(x_1..x_L) = pi(x_1) prod P(x_i, x_{i+1}), sequences in base-S order (x_1 most significant)."""
    S = chain.num_states
    p = chain.pi.copy()
    for _ in range(length - 1):  # a prefix's last state is its index mod S
        p = (p[:, None] * chain.P[np.arange(len(p)) % S]).reshape(-1)
    return p / p.sum()


def cells(tokens: torch.Tensor | np.ndarray, num_states: int) -> np.ndarray:
    """(N,) each sequence's index in ``joint_law``'s order; -1 for a sequence holding a non-state."""
    x = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens, dtype=np.int64)
    ok = ((x >= 0) & (x < num_states)).all(1)
    idx = np.zeros(len(x), dtype=np.int64)
    for j in range(x.shape[1]):
        idx = idx * num_states + np.clip(x[:, j], 0, num_states - 1)
    return np.where(ok, idx, -1)


def empirical(tokens, num_states: int, length: int) -> tuple[np.ndarray, float]:
    """(the empirical law over the S ** L cells, the fraction of sequences that are not chain sequences)."""
    c = cells(tokens, num_states)
    counts = np.bincount(c[c >= 0], minlength=num_states ** length)
    return counts / len(c), float((c < 0).mean())


def tv_to_law(tokens, law: np.ndarray, num_states: int) -> float:
    """Total variation between the samples' empirical law and ``law`` (sequences holding a non-state
    count in full: the law gives them zero mass)."""
    length = int(round(np.log(len(law)) / np.log(num_states)))
    emp, invalid = empirical(tokens, num_states, length)
    return 0.5 * (float(np.abs(emp - law).sum()) + invalid)


def reference_tv(law: np.ndarray, n: int, draws: int = 400, seed: int = 0) -> tuple[float, float]:
    """(mean, SD) of the TV between ``n`` true samples' empirical law and ``law``, over ``draws``
    independent sets of samples (multinomial counts: the same as n iid chain sequences)."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, law, size=draws)
    tv = 0.5 * np.abs(counts / n - law).sum(1)
    return float(tv.mean()), float(tv.std(ddof=1))


def sample_chain(chain: MarkovChain, n: int, length: int, seed: int) -> np.ndarray:
    """(n, L) iid sequences of the chain from its stationary start (the true samples)."""
    rng = np.random.default_rng(seed)
    S = chain.num_states
    x = np.empty((n, length), dtype=np.int64)
    x[:, 0] = rng.choice(S, size=n, p=chain.pi)
    cdf = np.cumsum(chain.P, axis=1)
    for i in range(1, length):
        u = rng.random(n)
        x[:, i] = np.minimum((u[:, None] > cdf[x[:, i - 1]]).sum(1), S - 1)
    return x


def brute_conditional(chain: MarkovChain, length: int, given: dict[int, int], position: int) -> np.ndarray:
    """(S,) P(x_position | x_j = given[j]) by summing the joint law over every sequence."""
    law = joint_law(chain, length)
    S = chain.num_states
    out = np.zeros(S)
    for idx, seq in enumerate(itertools.product(range(S), repeat=length)):
        if all(seq[j] == v for j, v in given.items()):
            out[seq[position]] += law[idx]
    return out / out.sum()
