"""A streamed request (``stream: true``) as server-sent events: the committed text as it grows
(OpenAI chunks: ``delta.content`` for chat, ``text`` otherwise), each step's trace-v1 frame
(``event: diffusion_frame``) when asked, the final chunk with the finish reasons, usage if asked,
and ``data: [DONE]``. A quiet stream gets an SSE comment every ``PING_SECONDS``; a stream the
client closes takes its rows out of the batch."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from .errors import Cancelled, stream_error
from .requests import Parsed
from .tasks import respond

log = logging.getLogger("textdiffusion.serve")

PING_SECONDS = 15.0
CHUNK_OBJECT = {"chat": "chat.completion.chunk", "infill": "infill.chunk", "edit": "edit.chunk"}


class Stream:
    """The events of one streamed job: ``events()`` is the response body (an async iterator of
    SSE text). ``updates`` is the queue the scheduler thread's reports arrive on."""

    def __init__(self, job, updates: asyncio.Queue, p: Parsed, meta: dict, task, scheduler, run):
        self.job, self.updates, self.p, self.meta, self.task = job, updates, p, meta, task
        self.scheduler, self.run = scheduler, run
        self.chat = p.endpoint == "chat"
        self.object = CHUNK_OBJECT.get(p.endpoint, "text_completion")
        self.sent = [""] * p.n  # per choice, the text sent so far
        self.backlog: list = []  # an update taken while gathering steps

    async def events(self):
        done = False
        try:
            if self.chat:
                yield self.chunk([{"index": b, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                                   "logprobs": None} for b in range(self.p.n)])
            while True:
                what, payload = await self.next_update()
                if what == "ping":
                    yield ": ping\n\n"  # an SSE comment: keeps proxies from cutting a quiet stream
                elif what == "step":
                    text = self.steps([payload, *self.waiting_steps()])
                    if text:
                        yield text
                else:
                    done = True
                    yield self.failed(payload) if what == "error" else self.finished(*payload)
                    return
        finally:
            if not done:
                self.scheduler.cancel(self.job)
                log.info("%s stream closed early: its rows leave the batch", self.job.id)

    async def next_update(self) -> tuple[str, object]:
        """The next report from the scheduler thread; ("ping", None) after a quiet while, and an
        error if the scheduler stopped or the job ran far past its deadline."""
        if self.backlog:
            return self.backlog.pop()
        try:
            return await asyncio.wait_for(self.updates.get(), PING_SECONDS)
        except asyncio.TimeoutError:
            if self.scheduler.alive and time.monotonic() <= self.job.deadline + 5:
                return "ping", None
            self.scheduler.cancel(self.job)
            return "error", Cancelled("the server could not finish the request (its scheduler stopped)")

    def waiting_steps(self) -> list:
        """The step reports already waiting (every frame is sent, the text once); anything else
        waits in the backlog."""
        steps = []
        while not self.updates.empty():
            what, payload = self.updates.get_nowait()
            if what != "step":
                self.backlog.append((what, payload))
                break
            steps.append(payload)
        return steps

    def chunk(self, choices: list, **extra) -> str:
        return "data: " + json.dumps({**self.meta, "object": self.object, "choices": choices, **extra}) + "\n\n"

    def piece(self, b: int, text: str | None, reason: str | None = None) -> dict:
        if self.chat:
            delta = {} if text is None else {"content": text}
            return {"index": b, "delta": delta, "finish_reason": reason, "logprobs": None}
        return {"index": b, "text": text or "", "finish_reason": reason, "logprobs": None}

    def steps(self, reports: list) -> str:
        """Each report's frame (if asked for), then the committed text each choice grew by."""
        out = []
        for report in reports:
            if self.p.include_denoising and report.frame is not None:
                data = {**self.meta, "object": self.object, "choices": [], "diffusion_frame": report.frame,
                        "diffusion_texts": report.texts}
                out.append("event: diffusion_frame\ndata: " + json.dumps(data) + "\n\n")
        grown = []
        for b, text in enumerate(reports[-1].committed[: self.p.n]):
            if len(text) > len(self.sent[b]) and text.startswith(self.sent[b]):
                grown.append(self.piece(b, text[len(self.sent[b]) :]))
                self.sent[b] = text
        if grown:
            out.append(self.chunk(grown))
        return "".join(out)

    def failed(self, exc: BaseException) -> str:
        return "data: " + json.dumps(stream_error(exc)) + "\n\n" + "data: [DONE]\n\n"

    def finished(self, result, usage) -> str:
        """The rest of each choice's text (and its fills), the finish reasons, usage, [DONE]."""
        body = respond(self.p.endpoint, self.p, result, usage, self.task, self.meta, self.run)
        last = []
        for b, choice in enumerate(body["choices"]):
            final = choice["message"]["content"] if self.chat else choice["text"]
            if not final.startswith(self.sent[b]):  # never expected: the committed text is final
                log.warning("%s row %d: committed text is not a prefix of the final text", self.job.id, b)
            rest = final[len(self.sent[b]) :] if final.startswith(self.sent[b]) else ""
            if rest or "fills" in choice:
                last.append({**self.piece(b, rest), **({"fills": choice["fills"]} if "fills" in choice else {})})
        out = [self.chunk(last)] if last else []
        out.append(self.chunk([self.piece(b, None, c["finish_reason"]) for b, c in enumerate(body["choices"])]))
        if self.p.include_usage:
            out.append(self.chunk([], usage=body["usage"]))
        return "".join(out) + "data: [DONE]\n\n"
