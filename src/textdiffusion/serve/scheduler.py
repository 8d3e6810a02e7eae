"""Step-level continuous batching: the rows of every running request go through the network
together, one call per step; new requests join between steps; each request is answered the
moment its own rows are done (no torch web framework here: ``serve/app.py`` talks HTTP).

A request is a ``Job``: a prepared ``control.filling.Task`` (its plans: canvas, sampler, network,
steps, generator) and how its progress is reported. The scheduler thread owns the model:

    admit:   pending jobs, first come first served, while the rows in flight stay <= max_batch;
             each plan is started (``Plan.start``) and its rows join the group of their sampler
             family and network (``State.join``): rows of other lengths, steps and sampler
             options share the call; a guided request (its own wrapped network) forms its own group
    step:    every group one step (``sampler.step(state, network)``: one network call)
    report:  each job its trace-v1 frame and its committed text (the finished prefix)
    release: finished rows leave the batch (``State.release``); a job whose rows are all done is
             finished (``Task.finish``: texts, fills, the best candidate of a variable hole)

A job's rows draw from their own generators, so its tokens are the same served alone or among
any others (the batching test checks it). Cancelled jobs (a client that went away) and jobs past
their deadline have their rows marked done and released at the next step.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import TextDiffusionError, UsageError


class QueueFull(TextDiffusionError):
    """The queue holds as many requests as it may (HTTP 429)."""


class RequestTimeout(TextDiffusionError):
    """A request ran past its deadline (HTTP 408)."""


class Cancelled(TextDiffusionError):
    """The client went away."""


EARLY_COMMITS = ("masked", "sedd-absorb", "block", "ar")  # processes whose decided tokens are final ...
REMASKING = ("remdm",)  # ... unless the sampler may re-mask them


def commits_early(process: str, sampler: str) -> bool:
    """Are a token's decided values final before the last step? For absorbing processes (and the
    AR twin) a decided token never changes, except under a sampler that re-masks (ReMDM); the
    uniform, score-entropy uniform and Gaussian processes revise every token until the end."""
    return process in EARLY_COMMITS and sampler not in REMASKING


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
    steps: int = 0
    cancelled: BaseException | None = None
    finished: bool = False

    @property
    def num_rows(self) -> int:
        return sum(len(p.canvas.tokens) for p in self.task.plans)

    def all_rows(self) -> list[Any]:
        return [r for rows in self.rows for r in rows]


@dataclass
class StepReport:
    """What a watched job sees after each of its steps."""

    step: int
    nfe: int
    committed: list[str]  # per row, the committed text so far (grows monotonically)
    frame: dict | None  # trace-v1 frame of its rows (with ``Job.frames``)
    texts: list[str]  # per row, the canvas now, masks shown as tokenizers.MASK_GLYPH


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


class Scheduler:
    """Runs jobs with step-level batching in one background thread (see the module doc).
    ``batching=False`` runs one job at a time (the benchmark's baseline)."""

    def __init__(self, run, *, max_batch: int = 32, max_queue: int = 64, batching: bool = True):
        if max_batch < 1 or max_queue < 1:
            raise UsageError("max_batch and max_queue must be at least 1")
        self.run, self.max_batch, self.max_queue, self.batching = run, max_batch, max_queue, batching
        self.tokenizer = run.tokenizer
        self.mask_id = run.process.mask_id
        self._pending: collections.deque[Job] = collections.deque()
        self._groups: dict[tuple, Group] = {}
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._ids = itertools.count(1)
        # figures for /metrics (read without the lock: plain ints and floats)
        self.stats = {"steps": 0, "calls": 0, "rows_stepped": 0, "tokens": 0, "finished": 0, "failed": 0,
                      "cancelled": 0, "batch_rows": 0}
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (time, tokens) finished

    # the web side ---------------------------------------------------------------------------------
    def start(self) -> Scheduler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="textdiffusion-scheduler", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job) -> Job:
        """Queue ``job``; QueueFull when the queue is full, UsageError when it can never fit a batch."""
        if job.num_rows > self.max_batch:
            raise UsageError(f"the request needs {job.num_rows} rows in one batch, more than the server's "
                             f"--max-batch {self.max_batch}: ask for fewer (n, or candidate sizes of a hole)")
        with self._lock:
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"the server's queue is full ({self.max_queue} requests waiting): retry later")
            job.id = job.id or f"job-{next(self._ids)}"
            self._pending.append(job)
            self._lock.notify_all()
        return job

    def cancel(self, job: Job, reason: BaseException | None = None) -> None:
        """Drop ``job`` (its rows leave the batch at the next step); nothing is reported to it."""
        with self._lock:
            if not job.finished and job.cancelled is None:
                job.cancelled = reason or Cancelled("the client went away")
                self._lock.notify_all()

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def rows_in_flight(self) -> int:
        return sum(len(g.state.rows) for g in list(self._groups.values()))

    @property
    def running(self) -> int:
        return sum(len(g.jobs) for g in list(self._groups.values()))

    def tokens_per_second(self, window: float = 10.0) -> float:
        """Tokens of requests finished in the last ``window`` seconds, per second."""
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - window:
            self._recent.popleft()
        return sum(n for _, n in self._recent) / window

    # the scheduler thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._lock:
                    while not self._stop and not self._pending and not self._groups:
                        self._lock.wait(0.5)
                    if self._stop:
                        break
                    self._expire()
                    admitted = self._admit()
                for job in admitted:
                    self._start(job)
                for key, group in list(self._groups.items()):
                    self._step(key, group)
        for job in [*self._pending, *(j for g in self._groups.values() for j in g.jobs)]:
            self._fail(job, Cancelled("the server stopped"))

    def _expire(self) -> None:
        """Cancel jobs past their deadline (called with the lock held)."""
        now = time.monotonic()
        for job in [*self._pending, *(j for g in self._groups.values() for j in g.jobs)]:
            if job.deadline is not None and now > job.deadline and job.cancelled is None:
                job.cancelled = RequestTimeout(f"the request took longer than its time limit "
                                               f"({job.deadline - job.arrived:g} s)")
        for job in [j for j in self._pending if j.cancelled is not None]:
            self._pending.remove(job)
            self._fail(job, job.cancelled)

    def _admit(self) -> list[Job]:
        """Pending jobs that fit the batch now, first come first served (the lock is held)."""
        taken, rows = [], self.rows_in_flight
        while self._pending:
            job = self._pending[0]
            busy = rows > 0 or taken
            if busy and (not self.batching or rows + job.num_rows > self.max_batch):
                break
            taken.append(self._pending.popleft())
            rows += job.num_rows
        return taken

    def _start(self, job: Job) -> None:
        job.started = time.monotonic()
        try:
            states = [plan.start() for plan in job.task.plans]
        except Exception as exc:  # noqa: BLE001 (a bad request or a bug: the job's answer says which)
            self._fail(job, exc)
            return
        for plan, state in zip(job.task.plans, states):
            job.rows.append(list(state.rows))
            job.calls += state.calls
            key = (state.family, id(plan.model))
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = Group(state, plan.model)
            else:
                group.state.join(state)
            if job not in group.jobs:
                group.jobs.append(job)

    def _step(self, key: tuple, group: Group) -> None:
        state = group.state
        rows = list(state.rows)
        if rows:
            state.report = any(j.frames for j in group.jobs if j.cancelled is None)
            try:
                out = rows[0].sampler.step(state, group.model)
            except Exception as exc:  # noqa: BLE001 (every job of the group gets the error)
                del self._groups[key]
                for job in group.jobs:
                    self._fail(job, exc)
                return
            self.stats["steps"] += 1
            self.stats["calls"] += 1
            self.stats["rows_stepped"] += len(rows)
            self.stats["batch_rows"] = len(rows)
            index = {id(r): b for b, r in enumerate(rows)}
            for job in group.jobs:
                if job.cancelled is None:
                    self._report(job, out, index)
            state.release()
        for job in list(group.jobs):
            if job.cancelled is not None:  # (perhaps cancelled while the step ran)
                for r in job.all_rows():
                    r.done = True
                state.release()
                group.jobs.remove(job)
                self.stats["cancelled"] += 1
                if isinstance(job.cancelled, RequestTimeout):
                    self._fail(job, job.cancelled)
                else:
                    job.finished = True
            elif all(r.done for r in job.all_rows()):
                group.jobs.remove(job)
                if not any(job in g.jobs for g in self._groups.values()):
                    self._finish(job)
        if not group.jobs and not state.rows:
            del self._groups[key]

    def _report(self, job: Job, out, index: dict[int, int]) -> None:
        from ..sampling.trace import frame

        mine = [r for r in job.all_rows() if id(r) in index]
        if not mine:
            return
        job.calls += 1
        job.steps = max(r.step for r in job.all_rows())
        early = commits_early(self.run.process.name, mine[0].sampler.name)
        committed = [self._committed(r, early) for r in job.all_rows()]
        texts = [job.commit(ids) if job.commit else self.tokenizer.decode(ids) for ids in committed]
        if job.first_commit is None and any(texts):
            job.first_commit = time.monotonic()
        if not job.watch:
            return
        rows = [index[id(r)] for r in mine]
        made = frame(out, job.steps - 1, self.mask_id, rows, [r.length for r in mine], job.calls) if job.frames else None
        shown = [self.tokenizer.decode([t for t in r.tokens.tolist() if t >= 0], show_mask=True) for r in mine]
        job.notify("step", StepReport(job.steps, job.calls, texts, made, shown))

    def _committed(self, row, early: bool) -> list[int]:
        """The ids of a row's first free span that are final: decided tokens up to the first
        undecided one (all of them once the row is done; none before then if tokens may change)."""
        fixed = row.fixed.tolist()
        start = fixed.index(False) if False in fixed else len(fixed)
        stop = start
        while stop < len(fixed) and not fixed[stop]:
            stop += 1
        if row.end is not None:
            stop = min(stop, row.end)
        ids = row.tokens[start:stop].tolist()
        if row.done:
            return ids
        if not early:
            return []
        for k, t in enumerate(ids):
            if t < 0 or t == self.mask_id:
                return ids[:k]
        return ids

    def _finish(self, job: Job) -> None:
        from ..sampling.base import State

        seconds = time.monotonic() - (job.started or job.arrived)
        try:
            gens = []
            for plan, rows in zip(job.task.plans, job.rows):
                s = State(rows, plan.process, plan.canvas.prompt_length, plan.sampler.family, calls=job.calls)
                gens.append(s.generation(seconds))
            result = job.task.finish(gens)
        except Exception as exc:  # noqa: BLE001
            self._fail(job, exc)
            return
        job.finished = True
        tokens = sum(int((~r.fixed).sum()) for r in job.all_rows())
        self.stats["finished"] += 1
        self.stats["tokens"] += tokens
        self._recent.append((time.monotonic(), tokens))
        first = None if job.first_commit is None else job.first_commit - job.arrived
        usage = Usage(job.steps, job.calls, seconds, (job.started or job.arrived) - job.arrived, first)
        job.notify("done", (result, usage))

    def _fail(self, job: Job, exc: BaseException) -> None:
        if job.finished:
            return
        job.finished = True
        self.stats["failed"] += 1
        job.notify("error", exc)
