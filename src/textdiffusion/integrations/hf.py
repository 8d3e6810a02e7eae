"""transformers interop (the ``hf`` extra; transformers stays optional): our denoiser as a
``PreTrainedModel`` with its ``PretrainedConfig``, registered with the Auto classes, and our
tokenizer as a ``PreTrainedTokenizerFast``.

    pipe.save_pretrained("my-model", format="transformers")    # or: textdiffusion export --format transformers
    import textdiffusion, transformers                           # either order: importing both registers
    model = transformers.AutoModelForMaskedLM.from_pretrained("my-model")   # an AR run: AutoModelForCausalLM
    tok = transformers.AutoTokenizer.from_pretrained("my-model")
    logits = model(**tok("ROMEO:", return_tensors="pt")).logits           # our module's logits, identical

The directory holds config.json (``model_type: textdiffusion``, the whole textdiffusion config
under ``textdiffusion`` and the special ids), model.safetensors (our parameter names under
``denoiser.``), tokenizer.json / tokenizer_config.json / special_tokens_map.json (ids exactly
ours) and card.json (the process's sampler settings); ``textdiffusion generate --model DIR``
and every command read it back without transformers (runs/adapters/exported.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError
from ..fileio import umask_mode

MODEL_TYPE = "textdiffusion"


def _require():
    try:
        import transformers
    except ImportError:
        raise UsageError("transformers is not installed: pip install 'textdiffusion[hf]'") from None
    return transformers


_classes: dict = {}


def classes() -> tuple[type, type]:
    """(TextDiffusionConfig, TextDiffusionModel), defined on first use (transformers imports then)."""
    if _classes:
        return _classes["config"], _classes["model"]
    transformers = _require()
    import torch
    from transformers.modeling_outputs import MaskedLMOutput

    class TextDiffusionConfig(transformers.PretrainedConfig):
        """A textdiffusion model: ``textdiffusion`` is its whole config (model, process, data,
        train sections) as a run directory's config.json holds it."""

        model_type = MODEL_TYPE

        def __init__(self, textdiffusion: dict | None = None, **kwargs):
            self.textdiffusion = textdiffusion or {}
            super().__init__(**kwargs)

    class TextDiffusionModel(transformers.PreTrainedModel):
        """Our denoiser (or AR twin) as a PreTrainedModel: ``forward(input_ids, attention_mask,
        t)`` returns its logits (B, T, V). ``t`` (B,) is the diffusion time, for time-conditioned
        models; ``attention_mask`` (B, T) marks the real tokens (0: padding nobody attends to)."""

        config_class = TextDiffusionConfig
        base_model_prefix = "denoiser"
        main_input_name = "input_ids"
        _no_split_modules = ["Block"]

        def __init__(self, config):
            super().__init__(config)
            from ..config import Config
            from ..models.transformer import Transformer
            from ..processes.registry import PROCESSES

            cfg = Config.from_dict(json.loads(json.dumps(config.textdiffusion)))
            backbone = PROCESSES[cfg.process.name].backbone
            if backbone == "embedding":
                from ..models.continuous import EmbeddingDenoiser

                self.denoiser = EmbeddingDenoiser(cfg.model, cfg.process.embed_dim, cfg.process.self_cond)
            else:
                self.denoiser = Transformer(cfg.model, attn=backbone)
            self._rope_ready = False
            self.post_init()

        def _init_weights(self, module):  # weights come from the checkpoint; our module inits itself
            pass

        def _network(self):
            """Our module, its RoPE tables recomputed once (transformers builds models on the
            meta device, which leaves non-persistent buffers uninitialised)."""
            if not self._rope_ready:
                net = getattr(self.denoiser, "net", self.denoiser)
                net.reset_rope()
                self._rope_ready = True
            return self.denoiser

        def get_input_embeddings(self):
            return getattr(self.denoiser, "embed", None)

        def forward(self, input_ids=None, attention_mask=None, t=None, return_dict=None, **kwargs):
            mask = None
            if attention_mask is not None and not bool(attention_mask.all()):
                T = input_ids.shape[1]
                mask = attention_mask.bool()[:, None, :].expand(-1, T, -1)
                if getattr(self.denoiser, "attn_mode", "full") == "causal":
                    mask = mask & torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()
                mask = mask | torch.eye(T, dtype=torch.bool, device=mask.device)  # a padding query sees itself
            if t is None and getattr(self.denoiser, "time", None) is not None:
                t = torch.ones(input_ids.shape[0], device=input_ids.device)  # all-noise time unless given
            logits = self._network()(input_ids, t, attn_mask=mask)
            return MaskedLMOutput(logits=logits)

    _classes.update(config=TextDiffusionConfig, model=TextDiffusionModel)
    return TextDiffusionConfig, TextDiffusionModel


def register() -> None:
    """Our config and model with transformers' Auto classes (AutoConfig, AutoModel,
    AutoModelForMaskedLM for diffusion models, AutoModelForCausalLM for AR runs)."""
    transformers = _require()
    config_cls, model_cls = classes()
    if MODEL_TYPE in transformers.CONFIG_MAPPING:
        return
    transformers.AutoConfig.register(MODEL_TYPE, config_cls)
    for auto in (transformers.AutoModel, transformers.AutoModelForMaskedLM, transformers.AutoModelForCausalLM):
        auto.register(config_cls, model_cls)


def register_when_imported() -> None:
    """Register as soon as transformers is imported (now, if it already is), without importing it."""
    from .hooks import when_imported

    when_imported("transformers", register)


def hf_tokenizer(tokenizer):
    """Our tokenizer as a ``PreTrainedTokenizerFast`` giving exactly our ids."""
    transformers = _require()
    from tokenizers import Tokenizer as RustTokenizer

    from ..tokenizers import SPECIALS, HFTokenizer, to_hf_json

    rust = RustTokenizer.from_str(to_hf_json(tokenizer))
    if isinstance(tokenizer, HFTokenizer):
        named = {"eos_token": tokenizer.eot_id, "mask_token": tokenizer.mask_id, "pad_token": tokenizer.pad_id,
                 "unk_token": tokenizer.specials.get("unk")}
        named = {k: rust.id_to_token(i) for k, i in named.items() if i is not None and rust.id_to_token(i)}
    else:
        named = dict(zip(("eos_token", "mask_token", "pad_token", "unk_token"), SPECIALS))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=rust, **named)


def specials_of(tokenizer) -> dict:
    return {"eot": tokenizer.eot_id, "mask": tokenizer.mask_id, "pad": tokenizer.pad_id,
            "unk": getattr(tokenizer, "specials", {}).get("unk", tokenizer.unk_id)}


def save_transformers(run, directory: str | Path, dtype: str = "float32", card: dict | None = None) -> Path:
    """Write ``run`` (a LoadedRun) as a transformers model directory (see the module docstring)."""
    import torch

    from ..runs import DTYPES, portable
    from ..runs.adapters.exported import PREFIX

    _require()
    register()
    config_cls, model_cls = classes()
    out = Path(directory)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: choose another directory")
    cfg = portable(run.cfg)
    tok = run.tokenizer
    is_ar = run.process.left_to_right
    config = config_cls(textdiffusion=cfg.to_dict(), textdiffusion_specials=specials_of(tok),
                        architectures=["TextDiffusionModel"], vocab_size=run.cfg.model.vocab_size,
                        eos_token_id=tok.eot_id, pad_token_id=tok.pad_id,
                        mask_token_id=None if is_ar else tok.mask_id, is_decoder=is_ar)
    with torch.device("meta"):
        model = model_cls(config)
    state = {PREFIX + k: v.detach().to(DTYPES[dtype]).contiguous().cpu() for k, v in run.model.state_dict().items()}
    model.load_state_dict(state, assign=True, strict=True)
    model.save_pretrained(out, safe_serialization=True)
    hf_tokenizer(tok).save_pretrained(out)
    if run.labels:
        (out / "labels.json").write_text(json.dumps(run.labels))
    if card:
        (out / "card.json").write_text(json.dumps(card, indent=1) + "\n")
    for f in out.rglob("*"):  # transformers writes its weights through safetensors, which makes them owner-only (0600)
        if f.is_file():
            umask_mode(f)
    return out
