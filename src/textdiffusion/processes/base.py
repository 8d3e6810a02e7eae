"""What every objective returns (diffusion processes and the AR twin alike)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to backpropagate: nats per scored token
    num_tokens: int
