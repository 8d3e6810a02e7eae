"""What every sampler starts from (a canvas), the state machine it runs (rows, ``start``,
``step``), what it returns, and the per-step record that live views hang off.

The sampler protocol (diffusers' one-``step`` scheduler, grown to a batch of independent rows):

    state = sampler.start(model, process, canvas, steps, gen)   # one Row per canvas row
    while not state.finished:
        out = sampler.step(state, model)    # every unfinished row one step, ONE network call
    generation = state.generation(seconds)

A ``Row`` is one sequence: its tokens, fixed positions, step index and step count, network calls,
done flag, its own random generator and its own sampler options (a sampler of the same family);
the family keeps its per-row extras (a cached prediction, the Gaussian z, the block being
decoded) in ``row.data``. Rows may be at different steps and have different lengths (the network
call right-pads them and no position attends to padding); a finished row leaves the batch.
``State.join`` adds the rows of another start (a server admitting a request between steps).
Given one generator, ``start`` derives each row's own generator from it (``row_generators``), so a
row draws the same numbers alone or batched: under the same per-row generator a row gives the
same tokens alone, batched with rows at other steps, or padded.

A ``Canvas`` is a (B, T) sequence with some positions ``fixed`` (kept verbatim) and the others
free (generated). Continuing a prompt is the canvas [prompt | free * length]; infilling is a
template with free holes anywhere; editing is a text whose free span is re-noised to time
``t_start`` < 1 and denoised from there (SDEdit). Every sampler takes ``canvas=``; the ones that
read only the left context (AR, block diffusion) accept prompt canvases only.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..limits.budget import check_projected_time, check_steps, max_seconds
from ..limits.memory import check_sampling_memory


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
    nearest: torch.Tensor | None = None  # (B, T) Gaussian process: each position's noisy vector read back as a token


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


def check_request(model, rows: int, prompt_length: int, length: int) -> None:
    """A request of ``rows`` sequences, ``prompt_length`` + ``length`` tokens each, fits the model
    context and the memory the machine has (checked before anything of that size is made)."""
    if prompt_length + length > model.cfg.context:
        raise UsageError(f"prompt ({prompt_length} tokens) plus length ({length}) exceeds the model context "
                         f"({model.cfg.context} tokens)")
    check_sampling_memory(model, rows, prompt_length + length)


def resolve_canvas(model, prompt: torch.Tensor | None, batch_size: int, length: int | None,
                   canvas: Canvas | None) -> Canvas:
    """The canvas a generate() call works on: the one given, or [prompt | length free positions];
    checked against the model's context."""
    device = next(model.parameters()).device
    if canvas is None:
        if length is None:
            raise UsageError("give a length (or a canvas)")
        P = 0 if prompt is None else prompt.shape[-1]
        check_request(model, batch_size, P, length)  # before the canvas is made: a huge length is one line
        canvas = prompt_canvas(prompt, batch_size, length, device)
    elif prompt is not None:
        raise UsageError("give a prompt or a canvas, not both")
    else:
        check_sampling_memory(model, canvas.tokens.shape[0], canvas.tokens.shape[1])
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


def time_grid(num_steps: int, t_start: float = 1.0) -> torch.Tensor:
    """The grid t_0 = t_start > t_1 > ... > t_N = 0 (float64) that time-stepping samplers walk."""
    if num_steps <= 0:
        raise UsageError("steps must be positive")
    return torch.linspace(t_start, 0.0, num_steps + 1, dtype=torch.float64)


Generators = torch.Generator | Sequence[torch.Generator | None] | None


def row_generators(gen: Generators, batch: int) -> list[torch.Generator | None]:
    """One generator per row: the list given, or each row's own seeded from ``gen`` in row order
    (row b's seed does not depend on how many rows follow: the first of ``num=3`` is ``num=1``'s
    text); None: every row draws from torch's global generator."""
    if gen is None:
        return [None] * batch
    if isinstance(gen, torch.Generator):
        seeds = torch.randint(0, 2**62, (batch,), generator=gen, device=gen.device).tolist()
        return [torch.Generator(device=gen.device).manual_seed(s) for s in seeds]
    gens = list(gen)
    if len(gens) != batch:
        raise UsageError(f"{len(gens)} generators for {batch} rows: give one per row")
    return gens


@dataclass(eq=False)  # rows are compared by identity (their tensors have no single truth value)
class Row:
    """One sequence being generated (a request of a server is one or more rows)."""

    tokens: torch.Tensor  # (T,) ids now (the Gaussian process: the most likely tokens so far)
    fixed: torch.Tensor  # (T,) bool: positions kept verbatim
    steps: int  # the step budget
    sampler: Any  # this row's options: a sampler of the state's family
    gen: torch.Generator | None = None
    t_start: float = 1.0
    step: int = 0  # steps taken
    nfe: int = 0  # network calls this row took part in
    done: bool = False
    end: int | None = None  # set when the row stopped early at end-of-text: its tokens end here
    data: dict = field(default_factory=dict)  # the family's per-row extras

    @property
    def length(self) -> int:
        return self.tokens.shape[0]


@dataclass
class State:
    """The rows of a batch in generation, and what they share (``shared``: a family's batch-wide
    cache, which its sampler's ``merge_shared`` merges when rows join)."""

    rows: list[Row]
    process: Any
    prompt_length: int
    family: str
    calls: int = 0  # batched network calls so far
    report: bool = True  # build the per-step record (the trace / a hook listens)
    shared: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)  # a sampler's own counts (speculative: accepted drafts)

    @property
    def finished(self) -> bool:
        return all(r.done for r in self.rows)

    def active(self) -> list[Row]:
        return [r for r in self.rows if not r.done]

    def join(self, other: State) -> None:
        """Add ``other``'s rows (started separately, perhaps steps ago) to this batch."""
        if other.family != self.family:
            raise UsageError(f"rows of a {other.family} sampler cannot join a batch of {self.family} rows")
        if self.shared or other.shared:  # a batch-wide cache (the AR twin's): its family merges it
            self.rows[0].sampler.merge_shared(self, other)
        self.rows.extend(other.rows)
        self.calls += other.calls

    def release(self) -> list[Row]:
        """Take the finished rows out of the batch and return them (a server answers each request
        the moment its rows are done and forgets them; the others go on exactly as before: a
        family's batch-wide cache holds unfinished rows only)."""
        done = [r for r in self.rows if r.done]
        self.rows = [r for r in self.rows if not r.done]
        return done

    def tokens(self) -> torch.Tensor:
        """(B, T) every row's tokens (rows stopped early at end-of-text are cut to the longest)."""
        T = max(r.length if r.end is None else r.end for r in self.rows)
        return torch.stack([r.tokens[:T] for r in self.rows])

    def generation(self, seconds: float, trace: list[torch.Tensor] | None = None) -> Generation:
        fixed = torch.stack([r.fixed for r in self.rows])
        return Generation(self.tokens(), self.prompt_length, self.calls, seconds, trace or [], fixed, dict(self.stats))

    def output(self, changed: dict[Row, torch.Tensor], dists: dict[Row, tuple[int, torch.Tensor]] | None = None,
               block: int | None = None, x0: torch.Tensor | None = None,
               nearest: dict[Row, torch.Tensor] | None = None) -> StepOutput:
        """The step's record over the whole batch: ``changed`` row -> (T,) bool, ``dists`` row ->
        (offset, (W, V) the distribution its tokens were drawn from), ``nearest`` row -> (T,) ids."""
        T = max(r.length for r in self.rows)  # rows of other lengths are shown right-padded with HOLE
        x = torch.stack([F.pad(r.tokens, (0, T - r.length), value=HOLE) for r in self.rows])
        moved = torch.zeros_like(x, dtype=torch.bool)
        for b, r in enumerate(self.rows):
            if r in changed:
                moved[b, : changed[r].shape[0]] = changed[r]
        log_probs, offset = None, 0
        if self.report and dists:
            spans = {(o, d.shape[0]) for o, d in dists.values()}
            if len(spans) == 1 and len(dists) == len(self.rows):
                offset = next(iter(spans))[0]
                log_probs = torch.stack([dists[r][1] for r in self.rows])
            else:  # rows at different blocks, or some without a draw: the full width, zeros elsewhere
                first = next(iter(dists.values()))[1]
                log_probs = first.new_zeros(len(self.rows), x.shape[1], first.shape[-1])
                for b, r in enumerate(self.rows):
                    if r in dists:
                        o, d = dists[r]
                        log_probs[b, o : o + d.shape[0]] = d
        near = None
        if self.report and nearest:
            near = torch.stack([F.pad(nearest[r], (0, T - r.length), value=HOLE) if r in nearest
                                else torch.full((T,), HOLE, dtype=torch.long, device=x.device) for r in self.rows])
        return StepOutput(x, x0, moved, log_probs=log_probs, offset=offset, nfe=self.calls, block=block, nearest=near)


def padded_call(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """One network call over rows of different lengths: ``inputs`` (T_b, ...) are right-padded with
    zeros and ``fn(batch, attn_mask)`` gets a (B, T, T) mask under which no position attends to
    padding (None when every row has the same length). Returns each row's (T_b, ...) output."""
    lengths = [x.shape[0] for x in inputs]
    T = max(lengths)
    if all(n == T for n in lengths):
        return list(fn(torch.stack(inputs), None))
    pad = [(0, 0) * (x.dim() - 1) + (0, T - x.shape[0]) for x in inputs]
    batch = torch.stack([F.pad(x, tuple(p)) for x, p in zip(inputs, pad)])
    out = fn(batch, padding_mask(lengths, T, batch.device))
    return [o[:n] for o, n in zip(out, lengths)]


def padding_mask(lengths: list[int], T: int, device) -> torch.Tensor:
    """(B, T, T) bool: row b's queries attend to its first ``lengths[b]`` positions, never to the
    padding after them."""
    real = torch.arange(T, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    return real[:, None, :].expand(len(lengths), T, T)


class Sampler:
    """The protocol every sampler follows: ``start`` makes the rows, ``step`` advances every
    unfinished row by one step with one network call, ``generate`` is the shared loop."""

    name = "sampler"
    family = "sampler"  # samplers of one family can batch their rows together
    remasks = False  # may a decided token be masked again (ReMDM)? Then nothing is final before the end

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for method in ("start", "step"):  # inference only, whoever drives the loop (a server too)
            if method in cls.__dict__:
                setattr(cls, method, torch.no_grad()(cls.__dict__[method]))
        if "__init__" in cls.__dict__:
            cls.__init__ = _building(cls.__dict__["__init__"])

    def __setattr__(self, name: str, value) -> None:
        """A sampler is one row's options, fixed when it is built: a call's state lives in its rows
        (``Row.data``), so a sampler shared by requests or rows can never carry one into another."""
        if not self.__dict__.get("_building"):
            raise AttributeError(f"a sampler's options are fixed when it is built: {type(self).__name__}.{name} "
                                 f"cannot be set; build another sampler with the options you want")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a sampler's options are fixed when it is built: {type(self).__name__}.{name} "
                             f"cannot be deleted; build another sampler with the options you want")

    def set_timesteps(self, num_steps: int, t_start: float = 1.0) -> None:
        raise AttributeError("a sampler keeps no call's state: use grid = sampler.timesteps(num_steps) for a loop of "
                             "your own")

    def start(self, model, process, canvas: Canvas, steps: int, gen: Generators = None) -> State:
        raise NotImplementedError

    def step(self, state: State, model) -> StepOutput:
        raise NotImplementedError

    def _rows(self, process, canvas: Canvas, steps: int, gen: Generators, draw: bool = True) -> State:
        """A state of one row per canvas row, free positions drawn from the prior (or an edit's
        q(x_t | text)) with the row's own generator, ``steps`` each."""
        if steps is None or steps <= 0:
            raise UsageError("steps must be positive")
        check_steps(steps)
        gens = row_generators(gen, canvas.tokens.shape[0])
        rows = []
        for b, g in enumerate(gens):
            one = Canvas(canvas.tokens[b : b + 1], canvas.fixed[b : b + 1], canvas.t_start)
            x = start_sequence(process, one, g)[0] if draw else canvas.tokens[b]
            rows.append(Row(x, canvas.fixed[b], steps, self, g, canvas.t_start))
        return State(rows, process, canvas.prompt_length, self.family)

    def generate(self, model, process, *, length: int | None = None, steps: int | None = None, batch_size: int = 1,
                 prompt: torch.Tensor | None = None, gen: Generators = None,
                 on_step: OnStep | None = None, trace: bool = False, canvas: Canvas | None = None) -> Generation:
        """Generate from a canvas (or [prompt | length free positions] x batch_size) in ``steps``
        steps: ``start``, then ``step`` until every row is done."""
        canvas = resolve_canvas(model, prompt, batch_size, length, canvas)
        return self.run(model, process, canvas, steps, gen, on_step, trace)

    @torch.no_grad()
    def run(self, model, process, canvas: Canvas, steps: int | None, gen: Generators = None,
            on_step: OnStep | None = None, trace: bool = False) -> Generation:
        """``generate`` on a canvas already checked against the model (``resolve_canvas``; a
        ``Plan`` holds one): ``start``, then ``step`` until every row is done."""
        state = self.start(model, process, canvas, steps, gen)
        state.report = on_step is not None or trace
        states: list[torch.Tensor] = []
        start, i, budget = time.perf_counter(), 0, max_seconds()
        while not state.finished:
            t_step = time.perf_counter()
            report_step(i, self.step(state, model), states if trace else None, on_step)
            i += 1
            if i == 2 and budget is not None:  # the second step's time (past warm-up), times the steps left
                left = max((r.steps - r.step for r in state.active()), default=0)
                check_projected_time(time.perf_counter() - t_step, left, budget, done=2)
        return state.generation(time.perf_counter() - start, states)


def _building(init):
    """``init`` allowed to set attributes (an __init__ calling its parent's counts once)."""

    @functools.wraps(init)
    def build(self, *args, **kwargs):
        depth = self.__dict__.get("_building", 0)
        object.__setattr__(self, "_building", depth + 1)
        try:
            init(self, *args, **kwargs)
        finally:
            object.__setattr__(self, "_building", depth)

    return build


@dataclass
class Plan:
    """A generate call prepared but not run: the sampler, the network it calls (the run's model or
    a guided wrapper), the process, the canvas (already checked: ``resolve_canvas``), the steps
    and the generator. ``generate()`` runs it alone; a server ``start()``s it and steps its rows
    together with other requests' (serve/scheduler.py): the same rows, the same tokens."""

    sampler: Sampler
    model: Any
    process: Any
    canvas: Canvas
    steps: int | None
    gen: Generators = None

    def start(self) -> State:
        return self.sampler.start(self.model, self.process, self.canvas, self.steps, self.gen)

    def generate(self, on_step: OnStep | None = None, trace: bool = False) -> Generation:
        return self.sampler.run(self.model, self.process, self.canvas, self.steps, self.gen, on_step, trace)


@dataclass
class Generation:
    tokens: torch.Tensor  # (B, T) prompt + generated tokens
    prompt_length: int
    nfe: int  # network function evaluations (forward passes of the whole batch)
    seconds: float
    trace: list[torch.Tensor] = field(default_factory=list)  # (B, T) after every step, if asked
    fixed: torch.Tensor | None = None  # (B, T) positions kept from the canvas (None: the prompt)
    stats: dict = field(default_factory=dict)  # the sampler's own counts (speculative: mean accepted drafts, calls)

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
