"""The time a sampling request may take: a step budget, and a wall-clock limit a request is held
to once its first steps have been timed (projected from them, so a request that would run for days
is refused in a second, with the estimate in the message)."""

from __future__ import annotations

import contextlib
from contextvars import ContextVar

from ..errors import UsageError
from .units import human_seconds

MAX_STEPS = 1_000_000  # sampling steps: no sampler here has use for more
DEFAULT_MAX_SECONDS = 3600.0  # the command line's --max-seconds for one sampling request

_max_seconds: ContextVar[float | None] = ContextVar("max_seconds", default=None)


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Within this block, every sampler refuses (after its first step) a request projected to take
    longer than ``seconds`` (None: no limit, the Python API's default)."""
    token = _max_seconds.set(seconds)
    try:
        yield
    finally:
        _max_seconds.reset(token)


def max_seconds() -> float | None:
    return _max_seconds.get()


def check_steps(steps) -> None:
    if steps is not None and steps > MAX_STEPS:
        raise UsageError(f"steps={steps:,} is more than {MAX_STEPS:,}: no sampler has use for that many (each step is "
                         f"a pass of the network); lower --steps")


def check_projected_time(seconds_per_step: float, steps_left: int, max_seconds: float | None, done: int = 1) -> None:
    """After ``done`` steps: refuse a request whose remaining steps would take longer than
    ``max_seconds`` at the speed of the last step."""
    if max_seconds is None or steps_left <= 0:
        return
    projected = seconds_per_step * steps_left
    if projected > max_seconds:
        raise UsageError(f"{steps_left + done:,} steps would take about {human_seconds(projected + seconds_per_step * done)} "
                         f"here (a step takes {seconds_per_step * 1000:,.0f} ms); lower --steps or --num, or raise "
                         f"--max-seconds (now {max_seconds:g})")
