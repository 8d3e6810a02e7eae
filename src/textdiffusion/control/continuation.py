"""Continuing a prompt, the task builder beside infilling (filling.py), editing (editing.py) and
chat (dialogue.py): ``prompt_task`` prepares it (a ``Task``: its plan, and the finish that
decodes the texts), ``continue_prompt`` runs it. ``Pipeline.generate``, the CLI's generate /
sample / eval, the server's completions and the lm-eval harness all go through here."""

from __future__ import annotations

import torch

from ..sampling import build_sampler
from ..sampling.base import Plan, resolve_canvas
from .filling import ControlResult, Task
from .guidance import guided_model


def continue_prompt(run, prompt: str = "", *, length: int | None = None, steps: int = 64, sampler: str | None = None,
                    num: int = 1, seed: int = 0, trace: bool = False, on_step=None, label: str | None = None,
                    guidance: float = 0.0, classifier=None, stop_at_eot: bool = False, **options):
    """What ``Pipeline.generate`` and ``textdiffusion generate/sample/eval`` run: (the sampler's
    Generation, the decoded texts, the sampler's name). With ``stop_at_eot`` each text ends at its
    first end-of-text (variable length); the samplers that can stop early do."""
    res = prompt_task(run, prompt, length=length, steps=steps, sampler=sampler, num=num, seed=seed, label=label,
                      guidance=guidance, classifier=classifier, stop_at_eot=stop_at_eot, **options).run(on_step, trace)
    return res.generation, res.texts, res.sampler


def prompt_task(run, prompt: str = "", *, length: int | None = None, steps: int = 64, sampler: str | None = None,
                num: int = 1, seed: int = 0, label: str | None = None, guidance: float = 0.0, classifier=None,
                stop_at_eot: bool = False, **options):
    """``continue_prompt`` prepared (a ``control.filling.Task``): its plan, and the finish whose
    ControlResult holds the texts (prompt included) and, in ``fills``, each continuation alone."""
    tok = run.tokenizer
    ids = torch.from_numpy(tok.encode_exact(prompt, "the prompt")) if prompt else None
    p_len = 0 if ids is None else len(ids)
    if length is None:
        length = max(1, min(128, run.cfg.model.context - p_len))
    smp = build_sampler(sampler, run.process, tok, eot_id=tok.eot_id if stop_at_eot else None, **options)
    canvas = resolve_canvas(run.model, ids, num, length, None)  # checked before it (or the mask below) is made
    positions = torch.zeros(num, p_len + length, dtype=torch.bool)
    positions[:, :p_len] = True  # prompt guidance: the unconditional pass sees no prompt
    model = guided_model(run, label, guidance, positions, classifier)
    gen = torch.Generator(device=canvas.tokens.device).manual_seed(seed)
    plan = Plan(smp, model, run.process, canvas, steps, gen)

    def finish(outs):
        out = outs[0]
        rows = out.tokens.tolist()
        if stop_at_eot:
            rows = [r[: p_len + r[p_len:].index(tok.eot_id)] if tok.eot_id in r[p_len:] else r for r in rows]
        return ControlResult([tok.decode(r) for r in rows], [[tok.decode(r[p_len:])] for r in rows], out, smp.name,
                             out.nfe, out.seconds)

    return Task([plan], finish)
