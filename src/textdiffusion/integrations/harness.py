"""lm-evaluation-harness: a ``textdiffusion`` model for ``lm_eval`` (the ``hf`` extra installs it).

    textdiffusion lm-eval --model textdiffusion --model_args pretrained=english --tasks TASK
    lm_eval.simple_evaluate(model="textdiffusion", ...)   # after `import textdiffusion`

``loglikelihood`` is the continuation's log-likelihood given its context: exact for an AR run,
for a diffusion run the ELBO (a lower bound, the conditional one: the context is never noised),
a Monte Carlo mean over ``mc_samples`` draws of t whose standard error is kept for every request
(``TextDiffusionLM.stderrs``) and summarised in the log. ``generate_until`` runs our samplers
(the run's card settings unless ``sampler``/``steps``/... are given in ``--model_args``).
"""

from __future__ import annotations

import logging
import math

from lm_eval.api.model import LM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from ..errors import UsageError

NAME = "textdiffusion"
log = logging.getLogger("lm_eval.textdiffusion")  # under lm_eval's logger: its handlers and level


class TextDiffusionLM(LM):
    """A textdiffusion run, a shipped model or a public checkpoint directory, for lm_eval.

    ``--model_args``: ``pretrained`` (name or directory; default english), ``device``,
    ``mc_samples`` (draws of t per diffusion score; default 32), ``seed``, and for generation
    ``sampler``, ``steps`` and the sampler's options (``temperature``, ``block_length``, ...).
    """

    def __init__(self, pretrained: str = "english", device: str = "cpu", mc_samples: int = 32, seed: int = 0,
                 sampler: str | None = None, steps: int | None = None, batch_size=None, max_batch_size=None,
                 **options):
        super().__init__()
        from ..runs import load_named
        from ..sampling.cards import card, task_defaults

        if int(mc_samples) < 1:
            raise UsageError(f"mc_samples must be at least 1 (got {mc_samples})")
        if str(device).startswith("cuda"):
            import torch

            if not torch.cuda.is_available():  # lm_eval's default device is cuda:0, asked for or not
                log.warning("textdiffusion: device %s asked for, but CUDA is not available here: running on the CPU",
                            device)
                device = "cpu"
        self.run = load_named(str(pretrained), device)
        self.defaults = task_defaults(card(self.run.run_dir), "generate")  # the card's sampling settings, as Pipeline.generate's
        self.mc_samples, self.seed = int(mc_samples), int(seed)
        self.sampler, self.steps, self.options = sampler, None if steps is None else int(steps), options
        self.stderrs: list[float] = []  # nats, one per loglikelihood request (0 for AR: exact)

    @property
    def exact(self) -> bool:
        return self.run.process.exact_likelihood

    # scoring ---------------------------------------------------------------------------------
    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Ids of (context, continuation) as lm_eval's own HF model cuts them: the context's
        trailing spaces go with the continuation, the continuation's ids are those of the whole
        text after the context's (so a tokenizer that merges across the seam scores the whole)."""
        tok = self.run.tokenizer
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = tok.encode(context + continuation).tolist()
        head = tok.encode(context).tolist() if context else []
        return head, whole[len(head):]

    def score(self, head: list[int], cont: list[int]) -> tuple[float, float, bool]:
        """(log-likelihood in nats, its Monte Carlo standard error, greedy) of ``cont`` after ``head``."""
        from ..evaluation.likelihood import continuation_logprob

        if not cont:
            return 0.0, 0.0, True
        ll, se, greedy = continuation_logprob(self.run, head, cont, mc_samples=self.mc_samples, seed=self.seed)
        if greedy is None:  # no one-pass answer for this process: its sampler at temperature 0
            greedy = self._greedy_by_sampling(head, cont)
        return ll, se, greedy

    def _greedy_by_sampling(self, head: list[int], cont: list[int]) -> bool:
        from ..control.continuation import prompt_task

        try:
            res = prompt_task(self.run, self.run.tokenizer.decode(head), length=len(cont), steps=len(cont),
                              temperature=0.0).run(None, False)
        except UsageError:  # a head the tokenizer cannot spell back: no greedy answer to compare
            return False
        return res.generation.tokens[0, -len(cont):].cpu().tolist() == list(cont)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for req in tqdm(requests, desc="textdiffusion loglikelihood", disable=disable_tqdm):
            ll, se, greedy = self.score(*self._pair(*req.args))
            self.stderrs.append(se)
            out.append((ll, greedy))
        self._report(len(requests))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """A whole text's log-likelihood, in windows of the model's context, each scored given
        the window before it (lm_eval's rolling windows; exact for AR, the ELBO for diffusion)."""
        tok, context = self.run.tokenizer, self.run.cfg.model.context
        out = []
        for req in tqdm(requests, desc="textdiffusion loglikelihood_rolling", disable=disable_tqdm):
            (text,) = req.args
            total, var = 0.0, 0.0
            windows = get_rolling_token_windows(tok.encode(text).tolist(), tok.eot_id, context, 1)
            for head, cont in map(make_disjoint_window, windows):
                ll, se, _ = self.score(head[1:] if head and head[0] == tok.eot_id else head, cont)
                total, var = total + ll, var + se * se
            self.stderrs.append(math.sqrt(var))
            out.append(total)
        self._report(len(requests))
        return out

    def _report(self, n: int) -> None:
        if self.exact or not n:
            return
        recent = sorted(self.stderrs[-n:])
        log.info("textdiffusion: %d log-likelihoods are ELBO bounds, Monte Carlo over t (%d draws each): "
                 "median standard error %.3f nats, largest %.3f", n, self.mc_samples, recent[len(recent) // 2],
                 recent[-1])

    # generation ------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        tok, context = self.run.tokenizer, self.run.cfg.model.context
        out = []
        for req in tqdm(requests, desc="textdiffusion generate_until", disable=disable_tqdm):
            prompt, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            wanted = int(kwargs.pop("max_gen_toks", 128))
            options = dict(self.options)
            if not kwargs.pop("do_sample", True) or kwargs.get("temperature") == 0:
                options["temperature"] = 0.0
            elif "temperature" in kwargs:
                options["temperature"] = float(kwargs["temperature"])
            unknown = set(tok.unknown_characters(prompt))  # dropped: the prompt is the task's, not ours to refuse
            ids = tok.encode("".join(c for c in prompt if c not in unknown) if unknown else prompt)
            length = max(1, min(wanted, context - 1))
            if len(ids) > context - length:  # keep the end of a long prompt, as lm_eval's models do
                ids = ids[len(ids) - (context - length):]
            text = tok.decode(ids) if len(ids) else ""
            gen = self._continue(text, length, options)
            row = gen.tokens[0, len(ids):].tolist()
            new = tok.decode(row[: row.index(tok.eot_id)] if tok.eot_id in row else row)
            for stop in until:
                if stop and stop in new:
                    new = new[: new.index(stop)]
            out.append(new)
        return out

    def _continue(self, text: str, length: int, options: dict):
        """One continuation of ``text`` (``length`` tokens, stopping at end-of-text) with this
        model's sampler settings, completed from its card: the generation."""
        from ..control.continuation import continue_prompt
        from ..sampling.cards import call_settings

        steps, sampler, settings = call_settings(self.steps, self.sampler, options, self.defaults)
        gen, _, _ = continue_prompt(self.run, text, length=length, steps=steps, sampler=sampler, seed=self.seed,
                                    stop_at_eot=True, **settings)
        return gen


def register() -> None:
    """``textdiffusion`` in lm_eval's model registry, beside its own models."""
    import lm_eval.models  # noqa: F401  (its own placeholders first: lm_eval fills an empty registry only)
    from lm_eval.api.registry import model_registry

    if NAME not in model_registry:
        model_registry.register(NAME, target="textdiffusion.integrations.harness:TextDiffusionLM")


def main(argv: list[str] | None = None) -> int:
    """``lm_eval``'s own command line with our model registered (``textdiffusion lm-eval ...``)."""
    import sys

    register()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

