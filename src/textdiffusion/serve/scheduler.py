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
import contextlib
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
        self.stats = {"steps": 0, "rows_stepped": 0, "tokens": 0, "finished": 0, "failed": 0,
                      "cancelled": 0, "batch_rows": 0}
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (time, tokens) finished

    # the web side ---------------------------------------------------------------------------------
    def start(self) -> Scheduler:
        if self._thread is None or not self._thread.is_alive():
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="textdiffusion-scheduler", daemon=True)
            self._thread.start()
        return self

    def drive(self, until=None) -> None:
        """Drive the scheduler in the calling thread until ``stop()`` (or until ``until()`` is true).
        ``textdiffusion serve`` runs it in the main thread, HTTP in another: torch's CPU kernels
        ran 1.3-1.6x slower in a second thread on a 2-core machine (BENCHMARKS.md)."""
        self.bind_here()
        self._loop(until)

    def bind_here(self) -> None:
        """The calling thread will drive the scheduler (``drive``): jobs may be submitted from now."""
        self._thread, self._stop = threading.current_thread(), False

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            with contextlib.suppress(RuntimeError):  # (the main thread, driving it, is not joined)
                if self._thread is not threading.main_thread():
                    self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Is the scheduler thread running (a server whose thread died answers 503)?"""
        return self._thread is not None and self._thread.is_alive() and not self._stop

    def submit(self, job: Job) -> Job:
        """Queue ``job``; QueueFull when the queue is full, UsageError when it can never fit a batch."""
        if job.num_rows > self.max_batch:
            raise UsageError(f"the request needs {job.num_rows} rows in one batch, more than the server's "
                             f"--max-batch {self.max_batch}: ask for fewer (n, or candidate sizes of a hole)")
        if not self.alive:
            raise Cancelled("the server is not running its scheduler: restart it")
        with self._lock:
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"the server's queue is full ({self.max_queue} requests waiting): retry later")
            job.id = job.id or f"job-{next(self._ids)}"
            job.plan_calls = [0] * len(job.task.plans)
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
        return len({id(j) for g in list(self._groups.values()) for j in list(g.jobs)})

    def tokens_per_second(self, window: float = 10.0) -> float:
        """Tokens of requests finished in the last ``window`` seconds, per second."""
        now = time.monotonic()
        return sum(n for t, n in list(self._recent) if t >= now - window) / window

    # the scheduler thread ------------------------------------------------------------------------
    def _loop(self, until=None) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._lock:
                    while not self._stop and not self._pending and not self._groups:
                        if until is not None and until():
                            self._stop = True
                            break
                        self._lock.wait(0.5)
                    if self._stop or until is not None and until() and not self._groups and not self._pending:
                        break
                    self._expire()
                    admitted = self._admit()
                for job in admitted:
                    self._guarded(self._start, job, jobs=[job])
                for key, group in list(self._groups.items()):
                    self._guarded(self._step, key, group, jobs=list(group.jobs), key=key)
        for job in [*self._pending, *self._running()]:
            self._fail(job, Cancelled("the server stopped"))

    def _guarded(self, fn, *args, jobs: list[Job], key: tuple | None = None) -> None:
        """``fn(*args)``; an exception fails ``jobs`` (and drops the group ``key``) but never stops
        the thread: the other requests go on."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 (a bad request or a bug: the jobs' answers say which)
            if key is not None:
                self._groups.pop(key, None)
            for job in jobs:
                self._fail(job, exc)

    def _running(self) -> list[Job]:
        seen: dict[int, Job] = {}
        for g in self._groups.values():
            for j in g.jobs:
                seen.setdefault(id(j), j)
        return list(seen.values())

    def _expire(self) -> None:
        """Cancel jobs past their deadline, and drop waiting jobs whose client went away (the lock
        is held)."""
        now = time.monotonic()
        for job in [*self._pending, *self._running()]:
            if job.deadline is not None and now > job.deadline and job.cancelled is None:
                job.cancelled = RequestTimeout(f"the request took longer than its time limit "
                                               f"({job.deadline - job.arrived:g} s)")
        for job in [j for j in self._pending if j.cancelled is not None]:
            self._pending.remove(job)
            self._end_cancelled(job)

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
        states = [plan.start() for plan in job.task.plans]  # (an error fails the job: _guarded)
        for i, (plan, state) in enumerate(zip(job.task.plans, states)):
            job.rows.append(list(state.rows))
            job.committed += [""] * len(state.rows)
            job.committed_lengths += [0] * len(state.rows)
            job.spans += [None] * len(state.rows)
            job.calls += state.calls
            job.plan_calls[i] += state.calls
            key = (state.family, id(plan.model))
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = Group(state, plan.model)
            else:
                group.state.join(state)
            if job not in group.jobs:
                group.jobs.append(job)
        if all(r.done for r in job.all_rows()):  # nothing to do (an edit that drew no mask)
            for group in self._groups.values():
                if job in group.jobs:
                    group.jobs.remove(job)
            self._finish(job)

    def _step(self, key: tuple, group: Group) -> None:
        state = group.state
        for job in group.jobs:
            if job.cancelled is not None or job.finished:  # cancelled, or failed in another group
                for r in job.all_rows():
                    r.done = True
        state.release()
        rows = list(state.rows)
        if rows:
            state.report = any(j.frames for j in group.jobs if j.cancelled is None)
            for out, stepped in self._step_rows(group):
                self.stats["steps"] += 1
                self.stats["rows_stepped"] += len(stepped)
                self.stats["batch_rows"] = len(stepped)
                ids = {id(r) for r in stepped}
                index = {id(r): b for b, r in enumerate(state.rows) if id(r) in ids}
                for job in group.jobs:
                    if job.cancelled is None and not job.finished:
                        self._report(job, out, index)
        for job in list(group.jobs):
            if job.cancelled is not None or job.finished:  # (perhaps cancelled while the step ran)
                for r in job.all_rows():
                    r.done = True
                group.jobs.remove(job)
                if job.cancelled is not None and not any(job in g.jobs for g in self._groups.values()):
                    self._end_cancelled(job)
            elif all(r.done for r in job.all_rows()):
                group.jobs.remove(job)
                if not any(job in g.jobs for g in self._groups.values()):
                    self._finish(job)
        state.release()
        if not group.jobs and not state.rows:
            del self._groups[key]

    def _step_rows(self, group: Group) -> list[tuple[Any, list]]:
        """One step of the group's rows: [(its StepOutput, the rows it stepped)]. Normally one
        batched call. If it fails with rows of several requests in it, the batch is put back as it
        was and each request is stepped alone: a request that fails alone fails alone (``_fail``),
        the others get what they would have got alone (each row has its own generator), and the
        next step batches them again. A family with a batch-wide cache (the AR twin's KV cache)
        cannot be stepped in parts: there the error fails the group's requests (``_guarded``)."""
        state, model = group.state, group.model
        live = [j for j in group.jobs if j.cancelled is None and not j.finished]
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
                self._fail(job, exc)
            finally:
                for r in others:
                    r.done = False
        return outs

    def _end_cancelled(self, job: Job) -> None:
        """A cancelled job leaves: a timeout is answered (408), a client that went away is not."""
        if isinstance(job.cancelled, RequestTimeout):
            self._fail(job, job.cancelled)
        elif not job.finished:
            job.finished = True
            self.stats["cancelled"] += 1

    def _report(self, job: Job, out, index: dict[int, int]) -> None:
        """After a step: the job's counts; its committed text (for its first commit, and for a
        watched job each time it grows); a watched job's step report."""
        from ..sampling.trace import frame

        mine = [r for r in job.all_rows() if id(r) in index]
        if not mine:
            return
        job.calls += 1
        for i, rows in enumerate(job.rows):
            if any(id(r) in index for r in rows):
                job.plan_calls[i] += 1
        job.steps = max(r.step for r in job.all_rows())
        if job.first_commit is not None and not job.watch:
            return
        early = self.run.process.keeps_decided and not mine[0].sampler.remasks
        grew = False
        for k, r in enumerate(job.all_rows()):
            ids = self._committed(job, k, r, early)
            if len(ids) != job.committed_lengths[k]:  # decode only what changed
                job.committed_lengths[k] = len(ids)
                job.committed[k] = job.commit(ids) if job.commit else self.tokenizer.decode(ids)
                grew = True
        if job.first_commit is None and any(job.committed):
            job.first_commit = time.monotonic()
        if not job.watch or not (grew or job.frames):
            return
        made = shown = None
        if job.frames:
            rows = [index[id(r)] for r in mine]
            made = frame(out, job.steps - 1, self.mask_id, rows, [r.length for r in mine], job.calls)
            shown = [self.tokenizer.decode([t for t in r.tokens.tolist() if t >= 0], show_mask=True) for r in mine]
        self._notify(job, "step", StepReport(job.steps, job.calls, list(job.committed), made, shown or []))

    def _committed(self, job: Job, k: int, row, early: bool) -> list[int]:
        """The ids of row ``k``'s first free span that are final: decided tokens up to the first
        undecided one (all of them once the row is done; none before then if tokens may change)."""
        if job.spans[k] is None:  # (the fixed positions never change: found once)
            fixed = row.fixed.tolist()
            start = fixed.index(False) if False in fixed else len(fixed)
            stop = start
            while stop < len(fixed) and not fixed[stop]:
                stop += 1
            job.spans[k] = (start, stop)
        start, stop = job.spans[k]
        if row.end is not None:
            stop = min(stop, row.end)
        if not row.done and not early:
            return []
        ids = row.tokens[start:stop].tolist()
        if row.done:
            return ids
        for n, t in enumerate(ids):
            if t < 0 or t == self.mask_id:
                return ids[:n]
        return ids

    def _finish(self, job: Job) -> None:
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
            self._fail(job, exc)
            return
        job.finished = True
        tokens = sum(int((~r.fixed).sum()) for r in job.all_rows())
        self.stats["finished"] += 1
        self.stats["tokens"] += tokens
        now = time.monotonic()
        self._recent.append((now, tokens))
        while self._recent and self._recent[0][0] < now - 60:  # a minute of history is all /metrics reads
            self._recent.popleft()
        if job.first_commit is None:
            job.first_commit = now
        usage = Usage(job.steps, job.calls, seconds, (job.started or job.arrived) - job.arrived,
                      job.first_commit - job.arrived)
        self._notify(job, "done", (result, usage))

    def _fail(self, job: Job, exc: BaseException) -> None:
        if job.finished:
            return
        job.finished = True
        for r in job.all_rows():  # its rows in other groups leave at their next step
            r.done = True
        self.stats["failed"] += 1
        self._notify(job, "error", exc)

    def _notify(self, job: Job, kind: str, payload) -> None:
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
