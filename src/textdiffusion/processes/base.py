"""What every objective returns (diffusion processes and the AR twin alike)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to backpropagate: nats per scored token
    num_tokens: int

    @classmethod
    def mean_over(cls, per_token: torch.Tensor, loss_mask: torch.Tensor | None = None) -> LossOutput:
        """Average (B, L) per-token losses over all tokens, or over those ``loss_mask`` keeps."""
        if loss_mask is None:
            return cls(per_token.mean(), per_token.numel())
        n = int(loss_mask.sum())
        return cls((per_token * loss_mask).sum() / max(n, 1), n)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32; float32 and float64 unchanged. Probability maths never runs
    below float32, and a float64 model (the golden-output tests) keeps float64 throughout."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def scored(fixed: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(keep, loss_mask) over the last L positions of a (B, L+1) ``fixed`` mask: conditioning
    positions (an SFT prompt) are never noised and never scored."""
    if fixed is None:
        return None, None
    keep = fixed[:, 1:]
    return keep, ~keep


def keep_clean(xt: torch.Tensor, x0: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    return xt if keep is None else torch.where(keep, x0, xt)


def stratified_uniform(batch: int, antithetic: bool, gen: torch.Generator | None, device=None) -> torch.Tensor:
    """(B,) draws from U[0, 1); antithetic: one uniform shifted by i/B, one draw per stratum."""
    if antithetic:
        u = torch.rand(1, generator=gen, device=device)
        return (u + torch.arange(batch, device=device) / batch) % 1.0
    return torch.rand(batch, generator=gen, device=device)


def discrete_times(u: torch.Tensor, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step i = floor(u T) + 1 of T, as times (t_i, t_{i-1}) = (i / T, (i - 1) / T)."""
    i = (u * num_steps).floor().clamp(max=num_steps - 1) + 1
    return i / num_steps, (i - 1) / num_steps


def sample_categorical(log_probs: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of (..., V) log-probabilities. Sampled in float64: float32 Gumbel noise
    truncates the tail and quietly lowers sample diversity (Zheng et al. 2024)."""
    shape = log_probs.shape
    probs = log_probs.double().exp().reshape(-1, shape[-1])
    return torch.multinomial(probs, 1, generator=gen).view(shape[:-1])
