"""Chat with an instruction-tuned run (``textdiffusion train --sft``).

The prompt is the chat template (``data.chat_prompt``) over the conversation so far, preceded by
end-of-text as in training; it is fixed while the response is generated into the rest of the
context, and the response is cut at its first end-of-text (SFT rows are padded with end-of-text,
so the model learns where to stop; samplers with an end-of-text stop, such as semi-ar, finish
early). Older turns are dropped when the conversation no longer fits the context.
"""

from __future__ import annotations

import torch

from ..data import chat_prompt
from ..errors import UsageError
from ..sampling.base import Generation, Plan, resolve_canvas
from .filling import ControlResult, Task, _generator, _sampler
from .guidance import guided_model

MIN_RESPONSE = 8  # tokens a response gets at least


def conversation(history: list[tuple[str, str]], message: str) -> str:
    """The templated text of earlier (prompt, response) turns followed by the new message."""
    return "".join(chat_prompt(p) + r + "\n" for p, r in history) + chat_prompt(message)


def chat(run, message: str, history: list[tuple[str, str]] | None = None, *, length: int | None = None,
         steps: int = 64, sampler: str | None = None, seed: int = 0, num: int = 1, guidance: float = 0.0,
         **options) -> ControlResult:
    """One assistant reply (``num`` of them, drawn as a batch) to ``message`` after ``history``;
    ``guidance`` > 0: classifier-free guidance on the prompt (runs tuned with prompt dropping)."""
    return chat_task(run, message, history, length=length, steps=steps, sampler=sampler, seed=seed, num=num,
                     guidance=guidance, **options).run()


def chat_task(run, message: str, history: list[tuple[str, str]] | None = None, *, length: int | None = None,
              steps: int = 64, sampler: str | None = None, seed: int = 0, num: int = 1, guidance: float = 0.0,
              **options) -> Task:
    """``chat`` prepared: its plan and the finish that cuts each reply at end-of-text."""
    tok, context = run.tokenizer, run.cfg.model.context
    history = list(history or [])
    tok.encode_exact(message, "the message")  # the user's words are kept verbatim or refused by name
    while True:
        ids = [tok.eot_id] + tok.encode(conversation(history, message)).tolist()
        if len(ids) + MIN_RESPONSE <= context or not history:
            break
        history = history[1:]  # forget the oldest turn
    room = context - len(ids)
    if room < 1:
        raise UsageError(f"the message ({len(ids)} tokens with the template) does not fit the model context "
                         f"({context} tokens)")
    length = room if length is None else length
    if length > room:
        raise UsageError(f"prompt ({len(ids)} tokens) plus length ({length}) exceeds the model context ({context} tokens)")
    smp = _sampler(run, sampler, {**options, "eot_id": tok.eot_id})
    canvas = resolve_canvas(run.model, torch.tensor(ids), num, length, None)  # checked before it is made
    prompt = canvas.fixed.clone()
    prompt[:, 0] = False  # as in training: the leading end-of-text is never dropped
    model = guided_model(run, None, guidance, prompt)
    plan = Plan(smp, model, run.process, canvas, steps, _generator(run, seed))

    def finish(outs: list[Generation]) -> ControlResult:
        out = outs[0]
        replies = [reply(tok, row) for row in out.tokens[:, len(ids) :].tolist()]
        return ControlResult(replies, [[r] for r in replies], out, smp.name, out.nfe, out.seconds,
                             {"turns_kept": len(history)})

    return Task([plan], finish)


def reply(tok, ids: list[int]) -> str:
    """The reply in response tokens: cut at the first end-of-text, without surrounding space."""
    if tok.eot_id in ids:
        ids = ids[: ids.index(tok.eot_id)]
    return tok.decode(ids).strip()
