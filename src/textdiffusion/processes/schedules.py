"""Noise schedules alpha(t): the probability that a token is still clean at time t in [0, 1].

alpha(0) = 1 (data), alpha(1) = 0 (pure noise). A process needs alpha(t) and the ELBO weight
-alpha'(t) / (1 - alpha(t)), written here in a numerically stable closed form.
"""

from __future__ import annotations

import math

import torch

from ..errors import UsageError


class LogLinear:
    """alpha(t) = 1 - t: the masked fraction grows linearly (MDLM's log-linear sigma)."""

    name = "loglinear"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return (1.0 - t).clamp(0.0, 1.0)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        # -alpha'/(1 - alpha) = 1 / t
        return 1.0 / t

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t) = -alpha'(t) / alpha(t): the forward jump rate (uniform noise)."""
        return 1.0 / (1.0 - t)

    def time_of(self, alpha: torch.Tensor) -> torch.Tensor:
        """The inverse: t such that alpha(t) = alpha."""
        return 1.0 - alpha


class Cosine:
    """alpha(t) = cos(pi t / 2): slow masking at first, fast near the end."""

    name = "cosine"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(0.5 * math.pi * t).clamp(0.0, 1.0)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        # (pi/2) sin(x) / (1 - cos x) with x = pi t / 2, which equals (pi/2) / tan(x / 2)
        return (0.5 * math.pi) / torch.tan(0.25 * math.pi * t)

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        # (pi/2) sin(x) / cos(x) with x = pi t / 2
        return (0.5 * math.pi) * torch.tan(0.5 * math.pi * t)

    def time_of(self, alpha: torch.Tensor) -> torch.Tensor:
        return torch.arccos(alpha.clamp(0.0, 1.0)) * (2.0 / math.pi)


SCHEDULES = {"loglinear": LogLinear, "cosine": Cosine}


def get_schedule(name: str):
    try:
        return SCHEDULES[name]()
    except KeyError:
        raise UsageError(f"unknown schedule {name!r} (choose {', '.join(SCHEDULES)})") from None
