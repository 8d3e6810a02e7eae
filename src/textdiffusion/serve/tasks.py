"""What a request asks for and what it is answered: the task a parsed request builds (its
plans, how its committed ids become text, its seed) and the OpenAI-shaped body of a finished
one. No web framework here."""

from __future__ import annotations

import secrets

from .requests import BadRequest, Parsed


def NOTHING_COMMITTED(ids: list[int]) -> str:
    """Fills (FIM, infill, edit) stream their frames and then the whole answer in one piece: the
    text around the holes is not a prefix that grows."""
    return ""


def build_task(pipe, p: Parsed):
    """The task a request asks for, how its committed ids become text, and the seed it uses."""
    from ..control.continuation import prompt_task
    from ..control.dialogue import chat_task
    from ..control.dialogue import reply as chat_reply
    from ..control.editing import edit_task
    from ..control.filling import infill_task
    from ..control.templates import Hole, Template

    run, tok = pipe.run, pipe.tokenizer
    s = dict(p.settings)
    seed = s.pop("seed")
    seed = secrets.randbits(62) if seed is None else seed
    label, guidance = s.pop("label"), s.pop("guidance")
    fills = p.endpoint in ("infill", "fim") or p.suffix is not None
    steps, sampler, options = pipe.settings(s.pop("steps"), s.pop("sampler"), s,
                                             pipe.infill_defaults if fills else None)
    common = {"steps": steps, "sampler": sampler, "seed": seed, "num": p.n, **options}
    def text_of(ids: list[int]) -> str:
        if tok.eot_id in ids:
            ids = ids[: ids.index(tok.eot_id)]
        return tok.decode(ids).rstrip("\ufffd")

    if p.endpoint == "chat":
        if not run.cfg.data.sft:
            raise BadRequest(f"{pipe.run.run_dir.name} is not instruction-tuned (train --sft): it has never seen the "
                             f"chat template; use /v1/completions", "model")
        if label is not None:
            raise BadRequest("label does not apply to chat", "label")
        turns = [m for _, m in p.messages]
        history = list(zip(turns[0:-1:2], turns[1:-1:2]))
        task = chat_task(run, turns[-1], history, length=p.length, guidance=guidance, **common)
        return task, lambda ids: chat_reply(tok, ids).rstrip("\ufffd"), seed
    cond = {"label": label, "guidance": guidance}
    if p.endpoint in ("completions", "fim") and p.suffix is not None:
        n = p.length or 16
        parts = [x for x in (p.prompt, Hole(n, n), p.suffix) if x != ""]
        return infill_task(run, Template(parts), **cond, **common), NOTHING_COMMITTED, seed
    if p.endpoint == "completions":
        return prompt_task(run, p.prompt, length=p.length, stop_at_eot=True, **cond, **common), text_of, seed
    if p.endpoint == "infill":
        return infill_task(run, p.template, candidates=p.candidates, **cond, **common), NOTHING_COMMITTED, seed
    start, end = p.span if p.span is not None else (None, None)
    return edit_task(run, p.text, start, end, strength=p.strength, **cond, **common), NOTHING_COMMITTED, seed


def respond(kind: str, p: Parsed, result, usage, task, meta: dict, run) -> dict:
    """The OpenAI-shaped body of a finished request."""
    tok = run.tokenizer
    gen = result.generation
    plan = task.plans[-1]
    P = plan.canvas.prompt_length
    fixed = int(plan.canvas.fixed[0].sum())
    choices, completion = [], 0
    for b in range(len(result.texts)):
        new = gen.tokens[b, P:].tolist()
        stopped = tok.eot_id in new
        reason = "stop" if stopped else "length"
        if kind == "chat":
            choices.append({"index": b, "message": {"role": "assistant", "content": result.texts[b]},
                            "finish_reason": reason, "logprobs": None})
        elif kind in ("completions", "fim"):
            text = "".join(result.fills[b])  # the continuation (or the middle, with a suffix)
            choices.append({"index": b, "text": text, "finish_reason": reason if p.suffix is None else "length",
                            "logprobs": None})
        else:
            choices.append({"index": b, "text": result.texts[b], "fills": result.fills[b], "finish_reason": "length"})
        if kind in ("chat", "completions") and p.suffix is None:  # a continuation: up to its end-of-text
            completion += new.index(tok.eot_id) if stopped else len(new)
        elif "candidates" in result.extra:  # variable holes: the sizes of the candidate kept for this sample
            tried = result.extra["candidates"]
            completion += sum(min(tried, key=lambda c: c["bits"][b])["sizes"])
        else:  # the free positions filled
            completion += int((~gen.fixed[b]).sum()) if gen.fixed is not None else len(new)
    nfe = usage.nfe
    body = {**meta, "object": {"chat": "chat.completion", "completions": "text_completion", "fim": "text_completion",
                               "infill": "infill", "edit": "edit"}[kind],
            "choices": choices,
            "usage": {"prompt_tokens": fixed, "completion_tokens": completion, "total_tokens": fixed + completion,
                      "denoising_steps": usage.steps, "nfe": nfe,
                      "tokens_per_forward": round(completion / max(nfe, 1), 4),
                      "time_to_first_commit_s": None if usage.time_to_first_commit_s is None
                      else round(usage.time_to_first_commit_s, 4),
                      "seconds": round(usage.seconds, 4), "queued_seconds": round(usage.queued_seconds, 4)},
            "sampler": result.sampler}
    if result.extra:
        body["extra"] = result.extra
    return body
