"""Score a run on text: which split of it, and why, then the likelihood report (what
``textdiffusion eval`` prints first; a server can call it the same way)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from ..data import eval_windows
from ..errors import UsageError
from .likelihood import evaluate_likelihood

DUEL_WINDOWS = 16  # windows DUEL scores by default: each batch of them costs the context's length in calls
AR_NOTE = "an AR run's NLL is already exact: the chain rule is DUEL's left-to-right order, one token per step"


def is_training_data(given: str, recorded: str) -> bool:
    """Is ``given`` the data the run was trained on? The same path, or, for an exported model
    (which records only the file's name: ``Pipeline.save_pretrained``) or a run trained on
    another machine (its path does not exist here), the same file name."""
    if given == recorded:
        return True
    if "stdlib" in (given, recorded) or not recorded:
        return False
    if Path(given).resolve() == Path(recorded):
        return True
    # a bare name (exported) or a path of another machine: the same file name
    return (Path(recorded).name == recorded or not Path(recorded).exists()) and Path(given).name == Path(recorded).name


def evaluate_run(run, data: str, *, split: str | None = None, discrete_steps: int | None = None, mc_samples: int = 4,
                 batch_size: int = 16, max_windows: int = 256, seed: int = 0, text_field: str | None = None,
                 likelihood: str = "elbo", duel_order: str | None = None, duel_steps: int | None = None,
                 duel_windows: int = DUEL_WINDOWS, duel_sampling: dict | None = None, progress: bool = False) -> dict:
    """Likelihood of ``run`` on ``data``: by default its held-out ``val`` split when ``data`` is
    what the run was trained on (the same split the run held out), else ``all`` of it. The result
    says which split was scored and why (``split``, ``split_reason``), then the report's fields
    (bits/token and bits/byte with their standard error). ``discrete_steps``: the discrete-time
    bound with that many steps (masked and uniform runs). ``text_field``: the JSONL field or table
    column with the text (default: the run's own, else ``text``).

    ``likelihood="duel"`` adds ``duel``: DUEL's exact likelihood (evaluation/duel.py) of the first
    ``duel_windows`` windows under the ``duel_order`` sampler (default top-prob) with ``duel_sampling`` (temperature,
    top_k, top_p, schedule) in ``duel_steps`` steps (default: one token per step, the context's
    length in network calls per ``batch_size`` windows), beside the ELBO of the same windows; for
    an AR run, its exact NLL (already exact). ``progress``: a bar of network calls on stderr."""
    from ..config import DataConfig
    from ..data import iter_documents, load_token_splits

    tok = run.tokenizer
    duel_sampler = check_likelihood(run, likelihood, duel_order, duel_sampling or {}) if likelihood == "duel" else None
    if discrete_steps is not None:
        from ..processes.registry import PROCESSES

        if not PROCESSES[run.process.name].discrete_time:
            kinds = " and ".join(s.name for s in PROCESSES.values() if s.discrete_time)
            raise UsageError(f"--discrete-steps is for {kinds} runs; this one is {run.process.name}")
        run.process.num_steps = discrete_steps
    own = is_training_data(data, run.cfg.data.path)
    if split is None:
        split = "val" if own else "all"
        reason = ("the run was trained on this data: its held-out validation split" if own
                  else "not the run's training data: all of it")
    else:
        reason = "asked for"
    field = text_field or (run.cfg.data.text_field if own else "text")
    if split == "all":
        has_text = [False]  # any document with more than whitespace (an empty one still gives an end-of-text token)

        def texts():
            for d in iter_documents(data, run.cfg.data.glob, text_field=field):
                has_text[0] = has_text[0] or (bool(d.text) and not d.text.isspace())
                yield d.text

        tokens = tok.encode_documents(texts())
        if not has_text[0]:
            raise UsageError(f"{data} holds no text (it is empty or only whitespace): give a file, folder or "
                             f"dataset with the text to score, e.g. the run's training data")
    else:
        cfg = (dataclasses.replace(run.cfg.data, path=data, text_field=field) if own
               else DataConfig(path=data, glob=run.cfg.data.glob, text_field=field))
        tokens = load_token_splits(cfg, tok, run.run_dir / "tokenizer.json")[split]
        if len(tokens) == 0:
            raise UsageError(f"the {split} split of {data} is empty (try --split all)")
    report = evaluate_likelihood(run.model, run.process, np.asarray(tokens), tok.token_bytes(),
                                 context=run.cfg.model.context, mc_samples=mc_samples, batch_size=batch_size,
                                 max_windows=max_windows, seed=seed)
    result = {"process": run.cfg.process.name, "data": data, "split": split, "split_reason": reason,
              "discrete_steps": getattr(run.process, "num_steps", None), **report.to_dict()}
    if likelihood == "duel":
        if duel_sampler is None:  # the AR twin: its NLL is exact already
            result["duel"] = {"order": "left-to-right", "steps": run.cfg.model.context, **report.to_dict(),
                              "note": AR_NOTE + ("" if duel_order in (None, "left-to-right") else
                                                 f" (it decodes left to right only, not {duel_order})")}
        else:
            result["duel"] = _duel(run, np.asarray(tokens), duel_sampler, duel_steps, duel_windows, batch_size,
                                   mc_samples, seed, progress)
    return result


def check_likelihood(run, likelihood: str, order: str | None, sampling: dict):
    """The DUEL sampler of ``run`` (``order``, default top-prob; None for an AR run, whose NLL is
    exact), or a UsageError naming what does not fit, before any text is read."""
    from ..sampling.registry import ABSORBING, DETERMINISTIC_ORDERS, build_sampler

    order = order or "top-prob"
    if likelihood not in ("elbo", "duel"):
        raise UsageError(f"--likelihood must be elbo or duel; got {likelihood!r}")
    if run.process.exact_likelihood:  # its NLL is exact already
        return None
    if run.process.name not in ABSORBING:
        raise UsageError(f"--likelihood duel is for masked diffusion runs ({', '.join(ABSORBING)}) and AR runs; "
                         f"this one is {run.process.name}, whose sampler has no exact likelihood: use --likelihood elbo")
    if order == "confidence":
        raise UsageError("the confidence sampler ranks positions by the token it drew, so its order depends on "
                         "the draw and DUEL does not apply: --duel-order top-prob ranks by the top-1 probability "
                         "(DUEL's confidence)")
    if order not in DETERMINISTIC_ORDERS:
        raise UsageError(f"--duel-order must be {', '.join(DETERMINISTIC_ORDERS)}; got {order!r}")
    if sampling.get("temperature") == 0:
        raise UsageError("--temperature 0 (greedy) gives one text all the probability, so held-out text scores "
                         "infinite bits: DUEL scores a sampling temperature (default 1)")
    return build_sampler(order, run.process, run.tokenizer, **{k: v for k, v in sampling.items() if v is not None})


def _duel(run, tokens: np.ndarray, sampler, steps: int | None, windows: int, batch_size: int, mc_samples: int,
          seed: int, progress: bool) -> dict:
    """DUEL's report on the first ``windows`` windows, with the ELBO of the same windows."""
    from tqdm.auto import tqdm

    from .duel import evaluate_duel

    context = run.cfg.model.context
    n = len(eval_windows(tokens, context, windows))
    calls = -(-n // batch_size) * min(steps or context, context)  # at most: a schedule may finish early
    bar = tqdm(total=calls, unit="call", desc="DUEL", disable=None if progress else True, file=sys.stderr,
               dynamic_ncols=True)
    try:
        report = evaluate_duel(run.model, run.process, tokens, run.tokenizer.token_bytes(), sampler, context=context,
                               steps=steps, batch_size=batch_size, max_windows=windows, progress=lambda: bar.update())
    finally:
        bar.close()
    elbo = evaluate_likelihood(run.model, run.process, tokens, run.tokenizer.token_bytes(), context=context,
                               mc_samples=mc_samples, batch_size=batch_size, max_windows=windows, seed=seed)
    out = {k: v for k, v in report.to_dict().items() if k != "mc_samples"}
    return {**out, "temperature": sampler.temperature, "top_k": sampler.top_k, "top_p": sampler.top_p,
            "schedule": sampler.schedule, "elbo_bits_per_token": elbo.bits_per_token,
            "elbo_bits_per_byte": elbo.bits_per_byte}
