"""The rows in flight: every running request's rows, in groups that share one network call per
step. The scheduler thread (scheduler.py) owns a ``Batch``; nothing here takes a lock.

    start:   a job's plans are started (``Plan.start``) and their rows join the group of their
             key (``group_key``: what must be equal for rows to share a call)
    step:    every group one step (``sampler.step(state, network)``: one network call); each job
             in it is counted and reported (reporter.py)
    release: finished rows leave (``State.release``); a job whose rows are all done is finished
             (``Task.finish``: texts, fills, the best candidate of a variable hole)

A job's rows draw from their own generators, so its tokens are the same served alone or among
any others (tests/test_batching.py). A job that is cancelled has its rows marked done and
released at its groups' next step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import RequestTimeout
from .metrics import Metrics
from .reporter import Reporter


@dataclass(eq=False)
class Job:
    """One request in the scheduler. ``notify(kind, payload)`` is called from the scheduler
    thread: ("step", StepReport) after each of its steps (only when ``watch``), ("done", (result,
    Usage)) or ("error", exception) once at the end."""

    task: Any  # control.filling.Task
    notify: Callable[[str, Any], None]
    watch: bool = False  # report every step (streaming)
    frames: bool = False  # ... with trace-v1 frames (costs the step's distributions)
    commit: Callable[[list[int]], str] | None = None  # committed token ids -> the text a client may show
    deadline: float | None = None  # time.monotonic() after which the job fails with RequestTimeout
    id: str = ""
    # the scheduler's bookkeeping
    arrived: float = field(default_factory=time.monotonic)
    started: float | None = None
    first_commit: float | None = None
    rows: list[list[Any]] = field(default_factory=list)  # per plan, its rows
    calls: int = 0  # network calls the job took part in
    plan_calls: list[int] = field(default_factory=list)  # ... per plan
    committed: list[str] = field(default_factory=list)  # per row, its committed text
    committed_lengths: list[int] = field(default_factory=list)  # ... and its length in tokens
    spans: list[tuple[int, int] | None] = field(default_factory=list)  # per row, its first free span
    steps: int = 0
    cancelled: BaseException | None = None
    finished: bool = False

    @property
    def num_rows(self) -> int:
        return sum(len(p.canvas.tokens) for p in self.task.plans)

    def all_rows(self) -> list[Any]:
        return [r for rows in self.rows for r in rows]

    @property
    def live(self) -> bool:
        return self.cancelled is None and not self.finished


@dataclass
class Usage:
    steps: int
    nfe: int
    seconds: float
    queued_seconds: float
    time_to_first_commit_s: float | None


@dataclass
class Group:
    state: Any  # sampling.base.State
    model: Any  # the network its rows call
    jobs: list[Job] = field(default_factory=list)


def group_key(plan, state) -> tuple:
    """What rows must share to be stepped by one network call: the sampler family (its ``step``)
    and the network object itself, so a guided request (its own wrapper around the run's model,
    control/guidance.py) never shares a plain request's call. (Speculative rows of different
    drafters share a group; their ``step`` drafts each drafter's rows apart.)"""
    return (state.family, id(plan.model))


class Batch:
    """The groups of rows in flight, with what each job is told (see the module doc)."""

    def __init__(self, run, metrics: Metrics):
        self.groups: dict[tuple, Group] = {}
        self.reporter, self.metrics = Reporter(run), metrics

    @property
    def rows(self) -> int:
        return sum(len(g.state.rows) for g in list(self.groups.values()))

    def jobs(self) -> list[Job]:
        """The running jobs, each once."""
        seen: dict[int, Job] = {}
        for g in list(self.groups.values()):
            for j in list(g.jobs):
                seen.setdefault(id(j), j)
        return list(seen.values())

    def start(self, job: Job) -> None:
        job.started = time.monotonic()
        states = [plan.start() for plan in job.task.plans]  # (an error fails the job: Scheduler._loop's guard)
        for i, (plan, state) in enumerate(zip(job.task.plans, states)):
            job.rows.append(list(state.rows))
            job.committed += [""] * len(state.rows)
            job.committed_lengths += [0] * len(state.rows)
            job.spans += [None] * len(state.rows)
            job.calls += state.calls
            job.plan_calls[i] += state.calls
            key = group_key(plan, state)
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = Group(state, plan.model)
            else:
                group.state.join(state)
            if job not in group.jobs:
                group.jobs.append(job)
        if all(r.done for r in job.all_rows()):  # nothing to do (an edit that drew no mask)
            for group in self.groups.values():
                if job in group.jobs:
                    group.jobs.remove(job)
            self.finish(job)

    def step_all(self) -> None:
        """Every group one step; an exception fails that group's jobs (and drops the group), never
        the others."""
        for key, group in list(self.groups.items()):
            jobs = list(group.jobs)
            try:
                self.step(key, group)
            except Exception as exc:  # noqa: BLE001 (a bad request or a bug: the jobs' answers say which)
                self.groups.pop(key, None)
                for job in jobs:
                    self.fail(job, exc)

    def step(self, key: tuple, group: Group) -> None:
        state = group.state
        self._drop_dead(group)
        state.release()
        if state.rows:
            state.report = any(j.frames for j in group.jobs if j.cancelled is None)
            for out, stepped in self._step_rows(group):
                self.metrics.stepped(len(stepped))
                ids = {id(r) for r in stepped}
                index = {id(r): b for b, r in enumerate(state.rows) if id(r) in ids}
                for job in group.jobs:
                    if job.live:
                        self._counted(job, out, index)
        for job in list(group.jobs):
            if not job.live:  # (perhaps cancelled while the step ran)
                for r in job.all_rows():
                    r.done = True
                group.jobs.remove(job)
                if job.cancelled is not None and not self._running(job):
                    self.end_cancelled(job)
            elif all(r.done for r in job.all_rows()):
                group.jobs.remove(job)
                if not self._running(job):
                    self.finish(job)
        state.release()
        if not group.jobs and not state.rows:
            del self.groups[key]

    def _drop_dead(self, group: Group) -> None:
        for job in group.jobs:
            if not job.live:  # cancelled, or failed in another group
                for r in job.all_rows():
                    r.done = True

    def _running(self, job: Job) -> bool:
        return any(job in g.jobs for g in self.groups.values())

    def _counted(self, job: Job, out, index: dict[int, int]) -> None:
        """A step the job's rows took part in: its counts, then its report."""
        if not any(id(r) in index for r in job.all_rows()):
            return
        job.calls += 1
        for i, rows in enumerate(job.rows):
            if any(id(r) in index for r in rows):
                job.plan_calls[i] += 1
        job.steps = max(r.step for r in job.all_rows())
        report = self.reporter.report(job, out, index)
        if report is not None:
            self.notify(job, "step", report)

    def _step_rows(self, group: Group) -> list[tuple[Any, list]]:
        """One step of the group's rows: [(its StepOutput, the rows it stepped)]. Normally one
        batched call. If it fails with rows of several requests in it, the batch is put back as it
        was and each request is stepped alone: a request that fails alone fails alone (``fail``),
        the others get what they would have got alone (each row has its own generator), and the
        next step batches them again. A family with a batch-wide cache (the AR twin's KV cache)
        cannot be stepped in parts: there the error fails the group's requests (``step_all``)."""
        state, model = group.state, group.model
        live = [j for j in group.jobs if j.live]
        before = state.active()
        if len(live) < 2 or state.shared:
            return [(state.rows[0].sampler.step(state, model), before)]
        saved = _snapshot(state)
        try:
            return [(state.rows[0].sampler.step(state, model), before)]
        except Exception:  # noqa: BLE001 (which request? each alone says)
            _restore(state, saved)
        outs = []
        for job in live:
            mine = {id(r) for r in job.all_rows()}
            others = [r for r in state.active() if id(r) not in mine]
            own = [r for r in state.active() if id(r) in mine]
            if not own:
                continue
            alone = _snapshot(state)
            for r in others:
                r.done = True
            try:
                outs.append((own[0].sampler.step(state, model), own))
            except Exception as exc:  # noqa: BLE001 (this request's own fault, or its share of a bug)
                _restore(state, alone)
                self.fail(job, exc)
            finally:
                for r in others:
                    r.done = False
        return outs

    def finish(self, job: Job) -> None:
        from ..sampling.base import State

        if job.finished:
            return
        seconds = time.monotonic() - (job.started or job.arrived)
        try:
            gens = []
            for plan, rows, calls in zip(job.task.plans, job.rows, job.plan_calls):
                s = State(rows, plan.process, plan.canvas.prompt_length, plan.sampler.family, calls=calls)
                gens.append(s.generation(seconds / len(job.rows)))
            result = job.task.finish(gens)
        except Exception as exc:  # noqa: BLE001
            self.fail(job, exc)
            return
        job.finished = True
        self.metrics.finished(sum(int((~r.fixed).sum()) for r in job.all_rows()))
        if job.first_commit is None:
            job.first_commit = time.monotonic()
        usage = Usage(job.steps, job.calls, seconds, (job.started or job.arrived) - job.arrived,
                      job.first_commit - job.arrived)
        self.notify(job, "done", (result, usage))

    def fail(self, job: Job, exc: BaseException) -> None:
        if job.finished:
            return
        job.finished = True
        for r in job.all_rows():  # its rows in other groups leave at their next step
            r.done = True
        self.metrics.totals["failed"] += 1
        self.notify(job, "error", exc)

    def end_cancelled(self, job: Job) -> None:
        """A cancelled job leaves: a timeout is answered (408), a client that went away is not."""
        if isinstance(job.cancelled, RequestTimeout):
            self.fail(job, job.cancelled)
        elif not job.finished:
            job.finished = True
            self.metrics.totals["cancelled"] += 1

    def notify(self, job: Job, kind: str, payload) -> None:
        try:
            job.notify(kind, payload)
        except Exception:  # noqa: BLE001 (the web side is gone, e.g. its event loop closed)
            job.finished = True


def _snapshot(state) -> dict:
    """What a step changes in ``state`` and its rows (tokens, counters, per-row extras, generator
    states), to put back if the step fails part-way."""
    rows = [(r, r.tokens.clone(), r.step, r.nfe, r.done, r.end, dict(r.data),
             r.gen.get_state() if r.gen is not None else None) for r in state.rows]
    return {"rows": rows, "calls": state.calls, "stats": dict(state.stats)}


def _restore(state, saved: dict) -> None:
    for r, tokens, step, nfe, done, end, data, gen in saved["rows"]:
        r.tokens, r.step, r.nfe, r.done, r.end, r.data = tokens, step, nfe, done, end, data
        if gen is not None:
            r.gen.set_state(gen)
    state.calls, state.stats = saved["calls"], saved["stats"]
