"""Our own models saved for transformers (``textdiffusion export --format transformers``,
``Pipeline.save_pretrained(dir, format="transformers")``; integrations/hf.py): read back
without transformers. config.json carries our whole config under ``textdiffusion`` and the
special ids under ``textdiffusion_specials``; the weights are our module's under ``denoiser.``."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import CheckpointError, ConfigError, TokenizerError

CARD: dict = {}
PREFIX = "denoiser."  # our module's parameters inside the PreTrainedModel (integrations/hf.py writes them)


def load(folder: Path, device="cpu", dtype: str | None = None, raw: dict | None = None):
    from ...config import Config
    from ..loaded import LoadedRun, build_model
    from ...tokenizers import HFTokenizer
    from . import hf_config
    from .common import DTYPES, read_mapped

    raw = raw or hf_config(folder)
    try:
        cfg = Config.from_dict(json.loads(json.dumps(raw["textdiffusion"])))
        specials = raw["textdiffusion_specials"]
    except KeyError as exc:
        raise CheckpointError(f"{folder}/config.json lacks {exc} (was it written by textdiffusion export?)") from None
    except ConfigError as exc:
        raise CheckpointError(f"{folder}/config.json: {exc}") from None
    try:
        tokenizer = HFTokenizer((folder / "tokenizer.json").read_text(encoding="utf-8"), specials, cfg.model.vocab_size)
    except FileNotFoundError:
        raise CheckpointError(f"{folder} has no tokenizer.json (export the model again)") from None
    except TokenizerError as exc:
        raise CheckpointError(f"{folder}/tokenizer.json: {exc}") from None
    model, process = build_model(cfg, tokenizer)

    def rename(key: str):
        if not key.startswith(PREFIX):
            raise CheckpointError(f"{folder}: unexpected weight {key!r} (not one of textdiffusion's)")
        return key[len(PREFIX):], ""

    state = read_mapped(folder, rename, DTYPES.get(dtype) if dtype else None)
    if getattr(model.cfg, "tie_embeddings", False) and "head.weight" not in state:
        state["head.weight"] = state.get("embed.weight")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{folder}: the weights do not fit its config: {str(exc).splitlines()[0]}") from None
    if dtype:  # else float32, whatever was stored (as a run directory loads)
        model.to(DTYPES[dtype])
        model.reset_rope()  # the rotary tables stay float32, as the public models' loaders keep them
    model.to(device).eval()
    return LoadedRun(folder, cfg, tokenizer, model, process, "model.safetensors")
