"""Held-out likelihood: the diffusion NELBO (Monte Carlo over t, with its standard error) or the
AR twin's exact NLL, on the same tokens, in bits/token and bits/byte."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..data import eval_windows


@dataclass
class LikelihoodReport:
    bits_per_token: float
    bits_per_byte: float
    # standard error of the mean over windows: it includes the Monte Carlo noise of t (diffusion)
    # and the spread between windows (both), so it is the honest error bar of the reported figure
    stderr_bits_per_token: float
    num_tokens: int
    num_bytes: int
    num_windows: int
    mc_samples: int
    exact: bool  # True for the AR twin's NLL, False for a diffusion bound

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate_likelihood(model, process, tokens: np.ndarray, token_bytes: np.ndarray, *, context: int,
                        mc_samples: int = 4, batch_size: int = 16, max_windows: int = 0,
                        seed: int = 0, progress=None) -> LikelihoodReport:
    """Score the last ``context`` tokens of non-overlapping windows that tile ``tokens``."""
    device = next(model.parameters()).device
    windows = eval_windows(tokens, context, max_windows)  # (N, context + 1)
    gen = torch.Generator(device=device).manual_seed(seed)
    exact = process.exact_likelihood
    samples = 1 if exact else mc_samples
    per_window = []  # nats per window, averaged over Monte Carlo draws
    model.eval()
    for i in range(0, len(windows), batch_size):
        batch = windows[i : i + batch_size].to(device)
        est = process.nelbo(model, batch, gen, num_samples=samples)  # (S, b)
        per_window.append(est.double().mean(0).cpu())
        if progress is not None:
            progress(len(batch))
    return window_report(torch.cat(per_window), windows[:, 1:], token_bytes, samples, exact)


def window_report(nats: torch.Tensor, scored: torch.Tensor, token_bytes: np.ndarray, mc_samples: int,
                  exact: bool) -> LikelihoodReport:
    """The report of ``nats`` (N,) per window over the ``scored`` (N, L) tokens: bits/token, and
    bits/byte over the bytes those tokens' text counts (``token_bytes``: end-of-text and unknown
    tokens count none)."""
    n_tokens = scored.numel()
    context = scored.shape[1]
    n_bytes = int(token_bytes[scored.cpu().numpy()].sum())
    total_bits = float(nats.sum()) / math.log(2)
    # standard error of the mean over windows, scaled to per token
    se = float(nats.std(unbiased=True)) / math.sqrt(len(nats)) / context / math.log(2) if len(nats) > 1 else float("nan")
    return LikelihoodReport(total_bits / n_tokens, total_bits / max(n_bytes, 1), se, n_tokens, n_bytes,
                            len(nats), mc_samples, exact)


@torch.no_grad()
def sequence_nll(model, process, ids: torch.Tensor, bos_id: int, mc_samples: int = 16, seed: int = 0) -> float:
    """Nats of one token sequence (L,) after ``bos_id``: the AR twin's exact NLL, or the diffusion
    NELBO averaged over ``mc_samples`` draws (seeded, so texts scored with the same seed share t)."""
    device = next(model.parameters()).device
    window = torch.cat([torch.tensor([bos_id]), ids.long().cpu()])[None].to(device)  # (1, L + 1)
    gen = torch.Generator(device=device).manual_seed(seed)
    samples = 1 if process.exact_likelihood else mc_samples
    return float(process.nelbo(model, window, gen, num_samples=samples).double().mean())


MC_BATCH = 16  # copies of one window per forward pass when drawing t


@torch.no_grad()
def continuation_logprob(run, head: list[int], cont: list[int], *, mc_samples: int = 32,
                         seed: int = 0) -> tuple[float, float, bool | None]:
    """(log p(cont | head) in nats, its Monte Carlo standard error, whether greedy decoding gives
    ``cont``). AR: the exact value (error 0; greedy: every teacher-forced argmax is the token).
    Diffusion: the conditional ELBO, a lower bound: ``head`` (after end-of-text) is kept clean and
    not scored, ``cont`` is corrupted and scored, ``mc_samples`` draws of t, seeded (every request
    sees the same draws, so the choices of one question are compared on paired noise); t is
    stratified over the draws, so the error, computed as if they were independent, is on the
    safe side. Greedy: every teacher-forced argmax is the token (AR), or with every continuation
    token masked each one is the argmax (masked); None for the other processes (the caller may
    run a sampler at temperature 0). A head longer than the context leaves its start behind."""
    from ..errors import UsageError

    model, process, tok = run.model, run.process, run.tokenizer
    context = run.cfg.model.context
    if len(cont) > context:
        raise UsageError(f"the continuation has {len(cont)} tokens, more than the model context ({context})")
    head = head[max(0, len(head) - (context - len(cont))):]
    device = next(model.parameters()).device
    window = torch.tensor([tok.eot_id, *head, *cont], device=device)[None]  # (1, L + 1)
    fixed = torch.zeros_like(window, dtype=torch.bool)
    fixed[:, : 1 + len(head)] = True
    gen = torch.Generator(device=device).manual_seed(seed)
    draws = 1 if process.exact_likelihood else mc_samples
    model.eval()
    nats = []
    for start in range(0, draws, MC_BATCH):
        b = min(MC_BATCH, draws - start)
        nats.append(process.loss(model, window.expand(b, -1), gen, fixed.expand(b, -1)).per_row.double().cpu())
    nats = torch.cat(nats)
    se = float(nats.std(unbiased=True)) / math.sqrt(draws) if draws > 1 else 0.0
    return -float(nats.mean()), se, _greedy(run, window, len(head), len(cont))


def _greedy(run, window: torch.Tensor, n_head: int, n_cont: int) -> bool | None:
    model, process = run.model, run.process
    target = window[0, 1 + n_head:]
    if process.left_to_right:
        return bool((model(window[:, :-1])[0, n_head:].argmax(-1) == target).all())
    if process.name == "masked":
        x = window[:, 1:].clone()
        x[0, n_head:] = process.mask_id
        t = torch.ones(1, device=x.device)
        return bool((process.log_probs(model(x, t))[0, n_head:].argmax(-1) == target).all())
    return None
