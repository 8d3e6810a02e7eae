"""What every sampler starts from (a canvas), what it returns, and the per-step record that live
views hang off.

A ``Canvas`` is a (B, T) sequence with some positions ``fixed`` (kept verbatim) and the others
free (generated). Continuing a prompt is the canvas [prompt | free * length]; infilling is a
template with free holes anywhere; editing is a text whose free span is re-noised to time
``t_start`` < 1 and denoised from there (SDEdit). Every sampler takes ``canvas=``; the ones that
read only the left context (AR, block diffusion) accept prompt canvases only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..errors import UsageError


@dataclass
class StepOutput:
    x_prev: torch.Tensor  # (B, T) the sequence after this step
    x0_pred: torch.Tensor | None  # (B, T) the model's current guess of the clean sequence
    changed: torch.Tensor  # (B, T) bool: positions decided in this step
    # what the trace reports (sampling/trace.py), filled by the generate loops:
    log_probs: torch.Tensor | None = None  # (B, W, V) the distribution tokens were drawn from, positions offset..offset+W
    offset: int = 0
    nfe: int | None = None  # network calls so far
    block: int | None = None  # the block being decoded (block-wise samplers)


OnStep = Callable[[int, StepOutput], None]


HOLE = -1  # a template position the sampler fills


@dataclass
class Canvas:
    tokens: torch.Tensor  # (B, T) ids; free positions hold the text to re-noise (edit) or HOLE
    fixed: torch.Tensor  # (B, T) bool: positions kept verbatim
    t_start: float = 1.0  # the time free positions start at: 1 = the prior, < 1 = an edit's strength

    def __post_init__(self):
        if self.tokens.shape != self.fixed.shape or self.tokens.dim() != 2:
            raise UsageError("canvas tokens and fixed must both be (batch, length)")
        if not 0.0 < self.t_start <= 1.0:
            raise UsageError(f"the start time (edit strength) must be in (0, 1]; got {self.t_start}")
        if bool((self.tokens[self.fixed] < 0).any()):
            raise UsageError("a fixed canvas position holds no token")
        if self.t_start < 1.0 and bool((self.tokens[~self.fixed] < 0).any()):
            raise UsageError("an edit (start time < 1) needs the text of every free position")

    @property
    def prompt_length(self) -> int:
        """Leading positions fixed in every row."""
        free = (~self.fixed).any(0)
        return int(free.float().argmax()) if bool(free.any()) else self.tokens.shape[1]

    @property
    def is_prompt(self) -> bool:
        """A prompt followed only by free positions that start from the prior (left-to-right decodable)."""
        return self.t_start >= 1.0 and not bool(self.fixed[:, self.prompt_length :].any())


def prompt_canvas(prompt: torch.Tensor | None, batch: int, length: int, device) -> Canvas:
    """[prompt | ``length`` free positions], the prompt repeated over the batch."""
    if length <= 0:
        raise UsageError("length must be positive")
    prompt = prompt_batch(prompt, batch, device)
    B, P = prompt.shape
    tokens = torch.cat([prompt, torch.full((B, length), HOLE, dtype=torch.long, device=device)], dim=1)
    fixed = torch.zeros_like(tokens, dtype=torch.bool)
    fixed[:, :P] = True
    return Canvas(tokens, fixed)


def resolve_canvas(model, prompt: torch.Tensor | None, batch_size: int, length: int | None,
                   canvas: Canvas | None) -> Canvas:
    """The canvas a generate() call works on: the one given, or [prompt | length free positions];
    checked against the model's context."""
    device = next(model.parameters()).device
    if canvas is None:
        if length is None:
            raise UsageError("give a length (or a canvas)")
        canvas = prompt_canvas(prompt, batch_size, length, device)
    elif prompt is not None:
        raise UsageError("give a prompt or a canvas, not both")
    T = canvas.tokens.shape[1]
    if T > model.cfg.context:
        P = canvas.prompt_length
        raise UsageError(f"prompt ({P} tokens) plus length ({T - P}) exceeds the model context "
                         f"({model.cfg.context} tokens)")
    if bool(canvas.fixed.all()):
        raise UsageError("nothing to generate: every position is fixed")
    return Canvas(canvas.tokens.to(device), canvas.fixed.to(device), canvas.t_start)


def require_prompt_canvas(canvas: Canvas, what: str) -> None:
    if not canvas.is_prompt:
        raise UsageError(f"{what} reads only the text to the left, so it can continue a prompt but not "
                         f"infill between fixed text or edit a span; use a masked diffusion model")


def start_sequence(process, canvas: Canvas, gen: torch.Generator | None = None) -> torch.Tensor:
    """(B, T) x at ``canvas.t_start``: fixed positions verbatim, free ones drawn from the prior
    (t_start = 1) or from q(x_t | text) (an edit)."""
    tokens = canvas.tokens
    if canvas.t_start >= 1.0:
        noisy = process.prior(tuple(tokens.shape), tokens.device, gen)
    else:
        t = torch.full((tokens.shape[0],), canvas.t_start, device=tokens.device)
        noisy = process.corrupt(tokens.clamp_min(0), t, gen)
    return torch.where(canvas.fixed, tokens, noisy)


@dataclass
class Generation:
    tokens: torch.Tensor  # (B, T) prompt + generated tokens
    prompt_length: int
    nfe: int  # network function evaluations (forward passes of the whole batch)
    seconds: float
    trace: list[torch.Tensor] = field(default_factory=list)  # (B, T) after every step, if asked
    fixed: torch.Tensor | None = None  # (B, T) positions kept from the canvas (None: the prompt)

    @property
    def new_tokens(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_length :]

    @property
    def generated(self) -> int:
        """Tokens the sampler decided (free canvas positions)."""
        if self.fixed is None:
            return self.new_tokens.numel()
        return int((~self.fixed[:, : self.tokens.shape[1]]).sum())

    @property
    def tokens_per_second(self) -> float:
        return self.generated / max(self.seconds, 1e-9)


def prompt_batch(prompt: torch.Tensor | None, batch: int, device) -> torch.Tensor:
    """(B, P) prompt ids repeated over the batch; (B, 0) if there is no prompt."""
    if prompt is None:
        return torch.zeros(batch, 0, dtype=torch.long, device=device)
    prompt = prompt.to(device)
    return prompt.expand(batch, -1) if prompt.dim() == 1 else prompt


def report_step(i: int, out: StepOutput, states: list[torch.Tensor] | None, on_step: OnStep | None) -> None:
    """Record a finished step: into the trace (if kept) and to the per-step hook (if any)."""
    if states is not None:
        states.append(out.x_prev.clone())
    if on_step is not None:
        on_step(i, out)
