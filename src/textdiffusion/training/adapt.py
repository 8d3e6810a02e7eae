"""AR -> diffusion conversion while training (``train --init AR_RUN --process masked``):
attention-mask annealing from causal to bidirectional (DiffuLLaMA, Gong et al. 2025).

At step s < N = ``adapt.anneal_steps`` every query attends to every earlier position and to each
later one with probability s / N (one (T, T) pattern per step, the same for every row and every
process: drawn from a generator seeded by the step, so a resumed or a torchrun run draws the same
masks). At step 0 the pattern is causal: with the logits shift (``adapt.shift``) the converted
model then computes exactly the AR model's predictions, and the diffusion loss starts from them.
From step N on the model is bidirectional, as it samples.
"""

from __future__ import annotations

import torch

SEED = 0x5EED_A11E  # the masks' generator: seeded by this and the step


def annealed_mask(step: int, steps: int, length: int, device=None) -> torch.Tensor | None:
    """(T, T) bool, True = may attend, for training step ``step`` of ``steps`` annealing steps;
    None once annealing is over (everyone sees everyone)."""
    if step >= steps:
        return None
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    gen = torch.Generator().manual_seed(SEED + step)
    opened = torch.rand(length, length, generator=gen) < step / steps
    return (causal | opened).to(device)


class Annealed:
    """The denoiser with this step's attention pattern bound (``attn_mask``)."""

    def __init__(self, model, mask: torch.Tensor):
        self.model, self.mask = model, mask

    def __getattr__(self, name):  # cfg, parameters(), ... of the wrapped model
        return getattr(self.model, name)

    def __call__(self, x, t=None, *args, **kwargs):
        T = x.shape[1]
        return self.model(x, t, *args, attn_mask=self.mask[:T, :T], **kwargs)


# ---- a transformers causal LM as the starting point (train --init HF_DIR) -------------------------
# GPT-2, LLaMA, Mistral and Qwen2 folders load natively into our Transformer (runs/adapters/gpt2.py,
# qwen2.py), so their weights start a run of ours: AR fine-tuning, or conversion into a diffusion model. A causal
# LM has no mask token; the run gets one: the first embedding row the tokenizer leaves unused (Qwen2
# pads its embedding to a multiple of 64), else one row appended. Its input embedding starts at zero
# (a blank input: on the second-order Markov chain a zero row converted as well as the AR twin's own
# never-trained mask row, and 0.11 bits/token better after 100 steps than the mean token embedding);
# the output head's row for it does not matter (no process predicts the mask).


def causal_lm_folder(path) -> bool:
    """Whether ``path`` is a transformers causal-LM folder (config.json with a CausalLM
    architecture), not one of our runs."""
    from pathlib import Path

    from ..runs.adapters import detect

    return Path(path).is_dir() and detect(path) == "hf_causal"


def read_causal_lm(folder, context: int | None = None):
    """Our AR run's (Config, Tokenizer) for a GPT-2 / LLaMA / Mistral / Qwen2 folder, with a mask token.
    ``context`` (the training window) defaults to 256 tokens, at most the model's positions."""
    from pathlib import Path

    from ..config import Config, ProcessConfig
    from ..errors import CheckpointError, ConfigError
    from ..runs.adapters import hf_config
    from ..runs.adapters.common import tokenizer_of
    from ..runs.adapters.hf_causal import NATIVE, describe, layout
    from ..runs.adapters.hf_masked import special_token
    from ..tokenizers import HFTokenizer

    folder = Path(folder)
    raw = hf_config(folder)
    kind = str(raw.get("model_type", "")).lower()
    if kind not in NATIVE:
        raise CheckpointError(f"{folder}: --init trains from transformers {', '.join(NATIVE)} causal LMs (their weights "
                              f"load into our Transformer); model_type {kind!r} only runs through transformers itself")
    desc = describe(raw, folder)
    model = layout(raw).model_config(raw, folder)
    positions = model.context
    model.context = context or min(256, positions)
    if model.context > positions:
        raise ConfigError(f"model.context={model.context} is longer than {folder}'s {positions} positions: "
                          f"train on windows of at most {positions} tokens")
    base = tokenizer_of(folder, desc, model.vocab_size, special_token(folder, "unk_token"))
    specials = dict(base.specials)
    specials["mask"] = base.base_size  # the first row past the tokenizer's own tokens
    model.vocab_size = max(model.vocab_size, base.base_size + 1)
    tokenizer = HFTokenizer(base._json, specials, model.vocab_size)
    cfg = Config(model=model, process=ProcessConfig(name="ar"))
    cfg.data.tokenizer, cfg.data.vocab_size = "bpe", max(260, model.vocab_size)
    return cfg, tokenizer


def load_causal_lm(model, folder, tokenizer) -> str:
    """The folder's weights into ``model`` (built from ``read_causal_lm``'s config): the embedding
    (and an untied head) grown to the run's rows, the mask's input row zero, learned positions
    (GPT-2) cut to the run's window."""
    from pathlib import Path

    from ..errors import CheckpointError
    from ..runs.adapters import hf_config
    from ..runs.adapters.common import read_mapped
    from ..runs.adapters.hf_causal import layout

    folder = Path(folder)
    state = read_mapped(folder, layout(hf_config(folder)).rename(folder), None)
    if "pos.weight" in state:
        state["pos.weight"] = state["pos.weight"][: model.cfg.context].clone()
    rows = model.embed.weight.shape[0]
    state["embed.weight"] = _grown(state["embed.weight"], rows)
    state["embed.weight"][tokenizer.mask_id] = 0.0
    if model.cfg.tie_embeddings or "head.weight" not in state:
        state["head.weight"] = state["embed.weight"]
    else:
        state["head.weight"] = _grown(state["head.weight"], rows)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{folder}: the weights do not fit its config.json: {str(exc).splitlines()[0]}") from None
    return f"hf_causal:{folder.name}"


def _grown(weight: torch.Tensor, rows: int) -> torch.Tensor:
    if weight.shape[0] >= rows:
        return weight[:rows].clone()
    return torch.cat([weight, weight.new_zeros(rows - weight.shape[0], weight.shape[1])])


def read_init(init, context: int | None = None):
    """(Config, Tokenizer) of what ``train.init`` names: one of our runs, or a causal-LM folder."""
    from ..runs import read_run

    return read_causal_lm(init, context) if causal_lm_folder(init) else read_run(init)


def load_init(model, init, tokenizer) -> str:
    """``train.init``'s weights into ``model``: a run's checkpoint, or a causal-LM folder's."""
    from pathlib import Path

    from ..runs.checkpoint import checkpoint_dir, load_weights

    if causal_lm_folder(init):
        return load_causal_lm(model, init, tokenizer)
    return load_weights(model, checkpoint_dir(Path(init)))
