"""What every sampler returns, and the per-step record that live views hang off."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class StepOutput:
    x_prev: torch.Tensor  # (B, T) the sequence after this step
    x0_pred: torch.Tensor | None  # (B, T) the model's current guess of the clean sequence
    changed: torch.Tensor  # (B, T) bool: positions decided in this step


OnStep = Callable[[int, StepOutput], None]


@dataclass
class Generation:
    tokens: torch.Tensor  # (B, T) prompt + generated tokens
    prompt_length: int
    nfe: int  # network function evaluations (forward passes of the whole batch)
    seconds: float
    trace: list[torch.Tensor] = field(default_factory=list)  # (B, T) after every step, if asked

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_length :]

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens.numel() / max(self.seconds, 1e-9)


def check_length(prompt_length: int, length: int, context: int) -> None:
    if length <= 0:
        raise ValueError("length must be positive")
    if prompt_length + length > context:
        raise ValueError(
            f"prompt ({prompt_length} tokens) plus length ({length}) exceeds the model context ({context} tokens)"
        )


def prompt_batch(prompt: torch.Tensor | None, batch: int, device) -> torch.Tensor:
    """(B, P) prompt ids repeated over the batch; (B, 0) if there is no prompt."""
    if prompt is None:
        return torch.zeros(batch, 0, dtype=torch.long, device=device)
    prompt = prompt.to(device)
    return prompt.expand(batch, -1) if prompt.dim() == 1 else prompt


def initial_sequence(model, process, prompt: torch.Tensor | None, batch_size: int, length: int,
                     gen: torch.Generator | None = None) -> torch.Tensor:
    """(B, P + length): the prompt followed by the process's prior (all [MASK], or random tokens)."""
    device = next(model.parameters()).device
    prompt = prompt_batch(prompt, batch_size, device)
    check_length(prompt.shape[1], length, model.cfg.context)
    return torch.cat([prompt, process.prior((prompt.shape[0], length), device, gen)], dim=1)


def report_step(i: int, out: StepOutput, states: list[torch.Tensor] | None, on_step: OnStep | None) -> None:
    """Record a finished step: into the trace (if kept) and to the per-step hook (if any)."""
    if states is not None:
        states.append(out.x_prev.clone())
    if on_step is not None:
        on_step(i, out)
