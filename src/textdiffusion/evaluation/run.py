"""Score a run on text: which split of it, and why, then the likelihood report (what
``textdiffusion eval`` prints first; a server can call it the same way)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .likelihood import evaluate_likelihood


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
                 batch_size: int = 16, max_windows: int = 256, seed: int = 0, text_field: str | None = None) -> dict:
    """Likelihood of ``run`` on ``data``: by default its held-out ``val`` split when ``data`` is
    what the run was trained on (the same split the run held out), else ``all`` of it. The result
    says which split was scored and why (``split``, ``split_reason``), then the report's fields
    (bits/token and bits/byte with their standard error). ``discrete_steps``: the discrete-time
    bound with that many steps (masked and uniform runs). ``text_field``: the JSONL field or table
    column with the text (default: the run's own, else ``text``)."""
    from ..config import DataConfig
    from ..data import iter_documents, load_token_splits

    tok = run.tokenizer
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
    return {"process": run.cfg.process.name, "data": data, "split": split, "split_reason": reason,
            "discrete_steps": getattr(run.process, "num_steps", None), **report.to_dict()}
