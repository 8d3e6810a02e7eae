"""What a request sees of its rows while they run: the committed text (the finished prefix of
each row's first free span: only tokens that will not change, so it only grows) and, for a
watched request, a ``StepReport`` per step with its trace-v1 frame (docs/trace-format.md).

Which decided tokens are final is the process's and the sampler's claim (``keeps_decided``,
``remasks``): an absorbing process commits its leftmost decided tokens before the end, unless
its sampler may re-mask them; a uniform or Gaussian process commits only finished rows."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class StepReport:
    """What a watched job sees after each of its steps."""

    step: int
    nfe: int
    committed: list[str]  # per row, the committed text so far (grows monotonically)
    frame: dict | None  # trace-v1 frame of its rows (with ``Job.frames``)
    texts: list[str]  # per row, the canvas now, masks shown as tokenizers.MASK_GLYPH


class Reporter:
    """Turns a job's rows into committed text and step reports, for a run's tokenizer and process."""

    def __init__(self, run):
        self.tokenizer, self.process = run.tokenizer, run.process
        self.mask_id = run.process.mask_id

    def report(self, job, out, index: dict[int, int]) -> StepReport | None:
        """After a step (``out``, its ``StepOutput``; ``index``: id(row) -> its batch row): the job's
        committed text (for its first commit, and for a watched job each time it grows) and, for a
        watched job whose text grew or that asked for frames, its step report."""
        from ..sampling.trace import frame

        if job.first_commit is not None and not job.watch:
            return None
        mine = [r for r in job.all_rows() if id(r) in index]
        if not mine:  # none of its rows took part in this step
            return None
        early = self.process.keeps_decided and not mine[0].sampler.remasks
        grew = False
        for k, r in enumerate(job.all_rows()):
            ids = self.committed(job, k, r, early)
            if len(ids) != job.committed_lengths[k]:  # decode only what changed
                job.committed_lengths[k] = len(ids)
                job.committed[k] = job.commit(ids) if job.commit else self.tokenizer.decode(ids)
                grew = True
        if job.first_commit is None and any(job.committed):
            job.first_commit = time.monotonic()
        if not job.watch or not (grew or job.frames):
            return None
        made = shown = None
        if job.frames:
            rows = [index[id(r)] for r in mine]
            made = frame(out, job.steps - 1, self.mask_id, rows, [r.length for r in mine], job.calls)
            shown = [self.tokenizer.decode([t for t in r.tokens.tolist() if t >= 0], show_mask=True) for r in mine]
        return StepReport(job.steps, job.calls, list(job.committed), made, shown or [])

    def committed(self, job, k: int, row, early: bool) -> list[int]:
        """The ids of row ``k``'s first free span that are final: decided tokens up to the first
        undecided one (all of them once the row is done; none before then unless ``early``)."""
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
