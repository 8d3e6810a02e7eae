"""Run a callback the moment another package is imported (now, if it already is), without
importing it ourselves: ``import textdiffusion`` registers with transformers and lm_eval this
way and stays light for users who never touch either.

This is the one thing ``import textdiffusion`` does beyond defining names (a finder at the front
of ``sys.meta_path`` per package not yet imported, which removes itself when that package loads),
and it stays because neither library offers another way in today:

* lm_eval's own command line (``lm_eval --model textdiffusion``) resolves ``--model`` against its
  registry before any code of ours runs; lm-eval 0.4.13, the newest release, has no plugin entry
  point for models (upstream PR #4013 adds one, unreleased), so our model must register when its
  registry is imported. ``textdiffusion lm-eval`` registers explicitly and needs no hook.
* transformers' Auto classes find a custom ``model_type`` only if it was registered
  (``AutoConfig.register``) in this process, or through remote code (``trust_remote_code``): an
  export that runs without textdiffusion is issue 43's; until then ``import textdiffusion`` in
  either order with transformers makes ``AutoModel.from_pretrained`` read our exports.

Both orders are tested (tests/test_hf.py, tests/test_harness.py): textdiffusion first (the finder
fires when the other loads) and second (the callback runs at once)."""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable


def _quietly(callback: Callable[[], None], what: str) -> None:
    try:
        callback()
    except Exception as exc:  # an incompatible version of theirs must not break their import
        warnings.warn(f"textdiffusion could not register with {what}: {exc}", stacklevel=2)


class _After(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, callback: Callable[[], None]):
        self.name, self.callback = name, callback

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _quietly(self.callback, self.name.split(".")[0])

        spec.loader.exec_module = exec_module
        return spec


def when_imported(name: str, callback: Callable[[], None]) -> None:
    """``callback()`` once module ``name`` has been imported (at once if it has been)."""
    if name in sys.modules:
        _quietly(callback, name.split(".")[0])
        return
    if not any(isinstance(f, _After) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _After(name, callback))
