"""Step-level continuous batching: the rows of every running request go through the network
together, one call per step; new requests join between steps; each request is answered the
moment its own rows are done (no web framework here: ``serve/app.py`` talks HTTP).

A request is a ``Job`` (batch.py): a prepared ``control.filling.Task`` (its plans: canvas,
sampler, network, steps, generator) and how its progress is reported. The ``Scheduler`` keeps
the queue and the thread that owns the model; each turn of its loop

    expires  jobs past their deadline, and drops waiting jobs whose client went away;
    admits   pending jobs, first come first served, while the rows in flight stay <= max_batch,
             and starts them into the batch (``Batch.start``; an error fails that job alone);
    steps    every group of the batch once (``Batch.step_all``: step, report, release, finish).

Cancelled jobs (a client that went away) and jobs past their deadline have their rows marked
done and released at the next step.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
import time

from ..errors import UsageError
from .batch import Batch, Job
from .errors import Cancelled, QueueFull, RequestTimeout
from .metrics import Metrics


class Scheduler:
    """Runs jobs with step-level batching in one background thread (see the module doc).
    ``batching=False`` runs one job at a time (the benchmark's baseline)."""

    def __init__(self, run, *, max_batch: int = 32, max_queue: int = 64, batching: bool = True):
        if max_batch < 1 or max_queue < 1:
            raise UsageError("max_batch and max_queue must be at least 1")
        self.run, self.max_batch, self.max_queue, self.batching = run, max_batch, max_queue, batching
        self.metrics = Metrics()
        self.batch = Batch(run, self.metrics)
        self._pending: collections.deque[Job] = collections.deque()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._ids = itertools.count(1)

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
        return self.batch.rows

    @property
    def running(self) -> int:
        return len(self.batch.jobs())

    # the scheduler thread ------------------------------------------------------------------------
    def _loop(self, until=None) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._lock:
                    while not self._stop and not self._pending and not self.batch.groups:
                        if until is not None and until():
                            self._stop = True
                            break
                        self._lock.wait(0.5)
                    if self._stop or until is not None and until() and not self.batch.groups and not self._pending:
                        break
                    self._expire()
                    admitted = self._admit()
                for job in admitted:
                    try:
                        self.batch.start(job)
                    except Exception as exc:  # noqa: BLE001 (this request's fault or a bug: its answer says which)
                        self.batch.fail(job, exc)
                self.batch.step_all()
        for job in [*self._pending, *self.batch.jobs()]:
            self.batch.fail(job, Cancelled("the server stopped"))

    def _expire(self) -> None:
        """Cancel jobs past their deadline, and drop waiting jobs whose client went away (the lock
        is held)."""
        now = time.monotonic()
        for job in [*self._pending, *self.batch.jobs()]:
            if job.deadline is not None and now > job.deadline and job.cancelled is None:
                job.cancelled = RequestTimeout(f"the request took longer than its time limit "
                                               f"({job.deadline - job.arrived:g} s)")
        for job in [j for j in self._pending if j.cancelled is not None]:
            self._pending.remove(job)
            self.batch.end_cancelled(job)

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
