"""The Python API, in the shape of the ecosystem's pipelines.

    from textdiffusion import Pipeline

    pipe = Pipeline.from_pretrained("runs/shakespeare")          # a run directory (or a saved pipeline)
    out = pipe.generate("ROMEO:", length=64, steps=32, sampler="confidence", seed=0, trace=True)
    out.text, out.nfe, out.seconds, out.trace[-1]
    pipe.infill("To be, or [MASK:6] to be").text
    pipe.edit("O Romeo, [EDIT]Romeo[/EDIT]! wherefore art thou", strength=0.8).text
    pipe.score("To be, or not to be")                             # bits (ELBO bound; exact for AR)
    pipe.save_pretrained("my-model", dtype="bfloat16")           # weights, config and tokenizer only

Every method is a thin call into the library (samplers, ``control``, ``evaluation``): the CLI and
this API share one code path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import UsageError
from .runs import DTYPES, portable
from .sampling.base import StepOutput


@dataclass
class Result:
    """What a pipeline call returns. ``trace`` (when asked for): the first sample's text after
    every step (masked positions shown as ``tokenizers.MASK_GLYPH``), a ``sampling.trace.Trace``
    whose ``data`` is the whole trace-format-v1 object (every row, step, confidence; ``.save(path)``)."""

    texts: list[str]
    tokens: torch.Tensor  # (num, T) token ids, prompt or fixed text included
    nfe: int  # network calls
    seconds: float
    sampler: str
    trace: list[str] = field(default_factory=list)
    fills: list[list[str]] = field(default_factory=list)  # infill / edit: the generated pieces
    stats: dict = field(default_factory=dict)  # the sampler's own counts (speculative: drafts kept per round, calls)

    @property
    def text(self) -> str:
        return self.texts[0]


class Pipeline:
    """A trained model with its tokenizer and process, ready to generate, infill, edit and score."""

    def __init__(self, run, card: dict | None = None):
        self.run = run
        self.card = dict(card or {})  # card.json: description, generate settings
        # sampling settings used when a call does not name its own (a shipped model's card.json):
        # for generate and edit, and for infill (the card's "infill" section, else the same)
        from .sampling.cards import task_defaults

        self.defaults = task_defaults(self.card, "generate")
        self.infill_defaults = task_defaults(self.card, "infill")
        self.drafter = None  # draft_with: the run that drafts for this AR model

    # loading and saving ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path | None = None, device: str = "cpu",
                        threads: int | None = None) -> Pipeline:
        """Load a shipped model by name (``textdiffusion models`` lists them; None: the default),
        a run directory, or a directory written by ``save_pretrained``. ``threads``: torch's CPU
        threads (a process-wide setting): None picks them as the command line does, the cores not
        already busy (runtime.auto_threads; torch's own default of one per core ran 3-30x slower on
        a busy machine), unless OMP_NUM_THREADS is set; 0 is that choice always; N sets N."""
        from .runs import load_named
        from .sampling.cards import card

        run = load_named(name_or_dir, device, threads)
        return cls(run, card(run.run_dir))

    def save_pretrained(self, directory: str | Path, dtype: str = "float32", card: dict | None = None,
                        format: str = "textdiffusion") -> Path:
        """Write what inference needs: config, tokenizer, labels and the (EMA) weights in ``dtype``
        (float32, bfloat16 or float16), in a directory ``from_pretrained`` and every command read.
        ``card`` (default: this pipeline's own card, if any) becomes card.json: a
        ``description`` and the ``generate`` settings used when a call names none.
        ``format="transformers"``: a directory transformers' Auto classes load too (textdiffusion/integrations/hf.py)."""
        if dtype not in DTYPES:
            raise UsageError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        if format not in ("textdiffusion", "transformers"):
            raise UsageError(f"format must be textdiffusion or transformers; got {format!r}")
        if format == "transformers":
            from .integrations.hf import save_transformers

            return save_transformers(self.run, directory, dtype, card if card is not None else self.card)
        out = Path(directory)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not empty: choose another directory")
        ckpt = out / "checkpoint"
        ckpt.mkdir(parents=True)
        portable(self.run.cfg).save(out / "config.json")
        self.run.tokenizer.save(out / "tokenizer.json")
        if self.run.labels:
            (out / "labels.json").write_text(json.dumps(self.run.labels))
        state = {k: v.detach().to(DTYPES[dtype]).contiguous().cpu() for k, v in self.run.model.state_dict().items()}
        from .runs.checkpoint import write_safetensors

        write_safetensors(ckpt / "model.safetensors", state)
        (ckpt / "state.json").write_text(json.dumps({"step": None, "inference_only": True, "dtype": dtype}))
        card = card if card is not None else self.card
        if card:
            (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
        return out

    # properties ------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.run.tokenizer

    @property
    def model(self):
        return self.run.model

    @property
    def config(self):
        return self.run.cfg

    # speculative decoding ----------------------------------------------------------------------
    def draft_with(self, drafter, draft_len: int = 8, draft_steps: int = 1, draft_confidence: float = 0.0) -> Pipeline:
        """Make speculative decoding this AR pipeline's default sampler: ``drafter`` (a run
        directory, saved pipeline or shipped name, a loaded run, or a Pipeline: a masked or block
        diffusion model with this model's tokenizer) proposes ``draft_len`` tokens a round in
        ``draft_steps`` calls (ending early where its top probability falls below
        ``draft_confidence``), the AR model verifies them; the outputs are the AR model's own.
        Calls (and a server's requests) that name a sampler still get that one. Returns self."""
        if not self.run.process.left_to_right:
            raise UsageError(f"a drafter speeds up an AR model; {self.run.run_dir} is a {self.run.process.name!r} "
                             f"model: serve an AR run (process ar) with --draft, or drop --draft")
        from .sampling.speculative import SpeculativeSampler, load_drafter

        if isinstance(drafter, (str, Path)):  # loaded on this model's device (once per path and device)
            drafter = load_drafter(str(drafter), next(self.run.model.parameters()).device)
        drafter = SpeculativeSampler(draft_run=drafter, draft_len=draft_len, draft_steps=draft_steps,
                                     draft_confidence=draft_confidence, tokenizer=self.tokenizer).drafter  # checked
        self.drafter = drafter
        speculative = {"sampler": "speculative", "draft_run": drafter, "draft_len": draft_len, "draft_steps": draft_steps,
                       "draft_confidence": draft_confidence}
        from .sampling.cards import BASE_DEFAULTS

        keep = {k: v for k, v in self.defaults.items() if k in BASE_DEFAULTS}  # the card's temperature, top-p, ...
        self.defaults = {**keep, **speculative}
        return self

    # generation ------------------------------------------------------------------------------
    def generate(self, prompt: str = "", *, length: int | None = None, steps: int | None = None, sampler: str | None = None,
                 num: int = 1, seed: int = 0, trace: bool = False, on_step: Callable[[int, StepOutput], None] | None = None,
                 label: str | None = None, guidance: float = 0.0, classifier=None, stop_at_eot: bool = False,
                 **options) -> Result:
        """Continue ``prompt`` (kept verbatim) with ``length`` new tokens (default: up to 128, within
        the context) in ``steps`` denoising steps. ``options``: temperature, top_k, top_p and the
        sampler's own (``sampling.registry.SAMPLERS[name].options``: block_length, threshold, ...;
        checked there, an option the sampler does not take is an error). Settings not given
        come from the model's card (``self.defaults``), else 64 steps of the run's own sampler."""
        from .control.continuation import continue_prompt
        from .control.templates import has_holes

        _check_args(prompt=(prompt, "text"), length=(length, "count?"), steps=(steps, "count?"), num=(num, "count"),
                    seed=(seed, "seed"))
        if has_holes(prompt):  # holes anywhere: filled, the rest kept verbatim (as `textdiffusion generate`)
            for what, value in (("length", length), ("on_step", on_step), ("stop_at_eot", stop_at_eot)):
                if value:
                    raise UsageError(f"{what} does not apply to a prompt with holes (size them with [MASK:n] or [MASK:a-b])")
            return self.infill(prompt, steps=steps, sampler=sampler, num=num, seed=seed, trace=trace, label=label,
                               guidance=guidance, classifier=classifier, **options)
        steps, sampler, options = self.settings(steps, sampler, options)
        recorder = self._recorder(trace, on_step)
        out, texts, name = continue_prompt(self.run, prompt, length=length, steps=steps, sampler=sampler, num=num,
                                           seed=seed, on_step=recorder or on_step, label=label,
                                           guidance=guidance, classifier=classifier, stop_at_eot=stop_at_eot, **options)
        return Result(texts, out.tokens, out.nfe, out.seconds, name,
                      self._trace(out, recorder, texts, name, steps, seed), stats=out.stats)

    def infill(self, template: str, *, steps: int | None = None, sampler: str | None = None, num: int = 1,
               seed: int = 0, trace: bool = False, label: str | None = None, guidance: float = 0.0,
               classifier=None, **options) -> Result:
        """Fill the [MASK], [MASK:n] and [MASK:a-b] holes of ``template``; its text is kept verbatim.
        Settings not given come from the card's infill settings (else its generate settings)."""
        from .control import infill

        _check_args(template=(template, "text"), steps=(steps, "count?"), num=(num, "count"), seed=(seed, "seed"))
        steps, sampler, options = self.settings(steps, sampler, options, self.infill_defaults)
        recorder = self._recorder(trace, None)
        res = infill(self.run, template, num=num, steps=steps, sampler=sampler, seed=seed, label=label,
                     guidance=guidance, classifier=classifier, on_step=recorder, **options)
        return self._from_control(res, recorder, steps, seed)

    def edit(self, text: str, span: tuple[int, int] | None = None, *, strength: float = 0.5, steps: int | None = None,
             sampler: str | None = None, num: int = 1, seed: int = 0, trace: bool = False, **options) -> Result:
        """Rewrite ``text[span[0]:span[1]]`` (or the [EDIT]...[/EDIT] span) at noise level ``strength``."""
        from .control import edit

        _check_args(text=(text, "text"), span=(span, "span"), steps=(steps, "count?"), num=(num, "count"),
                    seed=(seed, "seed"))
        steps, sampler, options = self.settings(steps, sampler, options)
        start, end = span if span is not None else (None, None)
        recorder = self._recorder(trace, None)
        res = edit(self.run, text, start, end, strength=strength, num=num, steps=steps, sampler=sampler, seed=seed,
                   on_step=recorder, **options)
        return self._from_control(res, recorder, steps, seed)

    def score(self, text: str, *, mc_samples: int = 16, seed: int = 0) -> float:
        """Bits the model needs for ``text`` (after end-of-text): the ELBO bound of a diffusion model
        (Monte Carlo over t, ``mc_samples`` draws), the exact NLL of the AR twin. Lower is likelier."""
        from .control.scoring import sequence_bits

        _check_args(text=(text, "text"), mc_samples=(mc_samples, "count"), seed=(seed, "seed"))
        return sequence_bits(self.run, [text], seed, mc_samples)[0]

    # helpers ---------------------------------------------------------------------------------
    def settings(self, steps: int | None, sampler: str | None, options: dict,
                 defaults: dict | None = None) -> tuple[int, str | None, dict]:
        """(steps, sampler, options) of a call: what it gives, the rest from the card's
        ``defaults`` (default: its generate settings), else the usual defaults."""
        from .sampling.cards import call_settings

        return call_settings(steps, sampler, options, self.defaults if defaults is None else defaults)

    def _recorder(self, trace: bool, then):
        from .sampling.trace import TraceRecorder

        return TraceRecorder(self.run.process.mask_id, then=then) if trace else None

    def _trace(self, out, recorder, texts, sampler: str, steps: int, seed: int):
        from .sampling.trace import Trace

        if recorder is None:
            return []
        frames = [self.tokenizer.decode(f["rows"][0]["tokens"], show_mask=True) for f in recorder.frames]
        fixed = None if out.fixed is None else out.fixed[0].nonzero().flatten().tolist()
        data = recorder.to_dict(texts=texts, sampler=sampler, process=self.run.process.name,
                                prompt_length=out.prompt_length, model=str(self.run.run_dir), steps=steps, seed=seed,
                                fixed=fixed)
        return Trace(frames, data)

    def _from_control(self, res, recorder=None, steps: int | None = None, seed: int | None = None) -> Result:
        g = res.generation
        return Result(res.texts, g.tokens, res.nfe, res.seconds, res.sampler,
                      self._trace(g, recorder, res.texts, res.sampler, steps, seed), res.fills)

    def __repr__(self) -> str:
        c = self.run.cfg
        return (f"Pipeline({self.run.run_dir}, process={c.process.name}, {c.model.n_layer}x{c.model.d_model}, "
                f"context={c.model.context}, vocab={self.tokenizer.vocab_size})")



def _check_args(**args) -> None:
    """The Python API's own argument checks (before anything reaches torch): each ``name=(value,
    kind)`` with kind "text", "count" (a whole number >= 1), "count?" (or None), "seed" (a whole
    number) or "span" (None or a (start, end) pair of whole numbers)."""
    for name, (value, kind) in args.items():
        whole = isinstance(value, int) and not isinstance(value, bool)
        if kind == "text" and not isinstance(value, str):
            raise UsageError(f"{name} must be a string; got {type(value).__name__} {value!r}")
        if kind in ("count", "count?") and not (value is None and kind == "count?") and not (whole and value >= 1):
            raise UsageError(f"{name} must be a whole number >= 1; got {value!r}")
        if kind == "seed" and not whole:
            raise UsageError(f"{name} must be a whole number; got {value!r}")
        if kind == "span" and value is not None and not (
                isinstance(value, (tuple, list)) and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise UsageError(f"{name} must be a (start, end) pair of character offsets; got {value!r}")
