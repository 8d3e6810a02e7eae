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
from ..sampling.base import prompt_canvas
from .filling import ControlResult, _generator, _sampler
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
    device = next(run.model.parameters()).device
    canvas = prompt_canvas(torch.tensor(ids), num, length, device)
    prompt = canvas.fixed.clone()
    prompt[:, 0] = False  # as in training: the leading end-of-text is never dropped
    model = guided_model(run, None, guidance, prompt)
    out = smp.generate(model, run.process, steps=steps, canvas=canvas, gen=_generator(run, seed))
    replies = []
    for row in out.tokens[:, len(ids) :].tolist():
        if tok.eot_id in row:
            row = row[: row.index(tok.eot_id)]
        replies.append(tok.decode(row).strip())
    return ControlResult(replies, [[r] for r in replies], out, smp.name, out.nfe, out.seconds,
                         {"turns_kept": len(history)})
