"""textdiffusion lm-eval: lm-evaluation-harness's own command line, with our model registered.

Every argument goes to lm_eval as is (``textdiffusion lm-eval --help`` is lm_eval's help):

    textdiffusion lm-eval --model textdiffusion --model_args pretrained=english,mc_samples=32 \\
        --tasks lambada_openai --limit 100

lm_eval's own ``lm_eval`` command finds only the models it ships (it reads no plugins), hence
this door; in Python, ``import textdiffusion`` registers the model for ``lm_eval.simple_evaluate``.
"""

from __future__ import annotations

import argparse

NAME = "lm-eval"
PARSER = dict(help="lm-evaluation-harness with --model textdiffusion (all arguments go to lm_eval)",
              description=__doc__.split("\n\n")[0], prefix_chars="+", add_help=False)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER, metavar="LM_EVAL_ARGS",
                   help="lm_eval's arguments: --model textdiffusion --model_args pretrained=RUN --tasks ...")


def main(args) -> int:
    from ..errors import TextDiffusionError, UsageError, first_line

    try:
        from ..integrations.harness import main as harness_main
    except ImportError:
        raise UsageError("lm-eval needs lm-evaluation-harness: pip install 'textdiffusion[hf]'") from None
    try:
        return harness_main(args.lm_eval_args)
    except SystemExit as exc:  # lm_eval's argparse: --help, or a bad argument it has already explained
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except TextDiffusionError:
        raise
    except (ValueError, KeyError, FileNotFoundError) as exc:  # lm_eval's answer to an unknown task, model, file
        if args.debug:
            raise
        raise UsageError(f"lm_eval: {first_line(exc)}") from None
