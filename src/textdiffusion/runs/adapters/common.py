"""What every adapter shares: a model family's ``Descriptor``, reading a folder's (sharded)
safetensors under a weight-name map onto our ``Transformer``, its tokenizer.json as an
``HFTokenizer``, and the ``LoadedRun`` every command samples from."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ...config import Config, ModelConfig, ProcessConfig
from ...errors import CheckpointError
from ..loaded import DTYPES, LoadedRun


@dataclass(frozen=True)
class Descriptor:
    """What a sampler must know about a public model family, and nothing about its code."""

    family: str
    mask_id: int | None  # None: not a masked model (an AR one)
    eot_id: int
    pad_id: int | None = None
    logits_shift: int = 0  # 1: position i's logits predict token i + 1 (Dream)
    attention: str = "full"  # full (bidirectional) | causal (AR)
    rope_base: float = 10000.0
    process: str = ""  # the process it was trained for; "" = masked (full attention) or ar (causal)
    block_size: int = 0  # block diffusion (BD3-LM): tokens per block


def config_value(raw: dict, *names, default=None, required: bool = True, folder: Path | None = None):
    """The first of ``names`` the config.json has (a one-line error naming them if none)."""
    for name in names:
        if raw.get(name) is not None:
            return raw[name]
    if required and default is None:
        raise CheckpointError(f"{folder}/config.json has no {' or '.join(names)}")
    return default


def weight_files(folder: Path) -> list[Path]:
    """The folder's safetensors files: one model.safetensors, or the shards its index names."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"{index} is corrupt: {exc}") from None
        files = [folder / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{folder} lacks the shards {', '.join(missing[:3])} its index names (download them too)")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    if list(folder.glob("*.bin")) or list(folder.glob("*.pt")):
        raise CheckpointError(f"{folder} has only pickled weights (.bin/.pt), which textdiffusion never loads: "
                              f"convert them to safetensors (transformers: model.save_pretrained(dir, safe_serialization=True))")
    raise CheckpointError(f"{folder} has no model.safetensors (nor an index of shards)")


def read_mapped(folder: Path, rename: Callable[[str], tuple[str, str] | None], dtype: torch.dtype | None):
    """State dict for our module: each stored tensor under ``rename(key)`` = (our name, part),
    where part "q"/"k"/"v" are concatenated in that order into our fused projection and part "T"
    is stored transposed (GPT-2's Conv1D weights, (in, out)); rename returning None drops the key
    (buffers such as rotary tables). Unknown keys are errors."""
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for path in weight_files(folder):
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    target = rename(key)
                    if target is None:
                        continue
                    name, part = target
                    tensor = f.get_tensor(key)
                    if dtype is not None:
                        tensor = tensor.to(dtype)
                    if part == "T":
                        out[name] = tensor.t().contiguous()
                    elif part:
                        parts.setdefault(name, {})[part] = tensor
                    else:
                        out[name] = tensor
        except (OSError, RuntimeError) as exc:  # safetensors' header / truncation errors
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    for name, pieces in parts.items():
        if set(pieces) != {"q", "k", "v"}:
            raise CheckpointError(f"{folder}: {name} lacks its {', '.join(sorted({'q', 'k', 'v'} - set(pieces)))} projection")
        out[name] = torch.cat([pieces["q"], pieces["k"], pieces["v"]])
    return out


def unknown_key(folder: Path, key: str):
    raise CheckpointError(f"{folder}: unexpected weight {key!r} (is this the family's standard layout?)")


def tokenizer_of(folder: Path, desc: Descriptor, vocab_size: int, unk_id: int | None = None):
    from ...errors import TokenizerError
    from ...tokenizers import HFTokenizer

    path = folder / "tokenizer.json"
    if not path.is_file() and desc.family in ("mdlm", "bd3lm", "sedd"):
        raise CheckpointError(
            f"{folder} has no tokenizer.json: {desc.family.upper()} uses GPT-2's; write it with python -c \"from "
            f"transformers import AutoTokenizer; AutoTokenizer.from_pretrained('gpt2').save_pretrained('{folder}')\"")
    if not path.is_file():
        raise CheckpointError(
            f"{folder} has no tokenizer.json: write one with python -c \"from transformers import AutoTokenizer; "
            f"AutoTokenizer.from_pretrained('{folder}', trust_remote_code=True).save_pretrained('{folder}')\"")
    specials = {"eot": desc.eot_id, "mask": desc.mask_id if desc.mask_id is not None else desc.eot_id,
                "pad": desc.pad_id, "unk": unk_id}
    try:
        return HFTokenizer(path.read_text(encoding="utf-8"), specials, vocab_size)
    except TokenizerError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def token_id(folder: Path, content: str) -> int | None:
    """The id tokenizer.json gives a special token's text (None without it)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    for added in data.get("added_tokens", []):
        if added.get("content") == content:
            return int(added["id"])
    vocab = (data.get("model") or {}).get("vocab")
    return vocab.get(content) if isinstance(vocab, dict) else None


def hf_from_pretrained(auto_cls, folder: Path, dtype: str | None):
    """``auto_cls.from_pretrained`` (transformers' own loading; never remote code), its failure
    one line naming the folder. Only safetensors weights: a folder with only pickled ones
    (pytorch_model.bin) is refused before transformers would unpickle it (``weight_files``)."""
    weight_files(folder)
    try:
        return auto_cls.from_pretrained(str(folder), dtype=DTYPES.get(dtype) if dtype else None,
                                        trust_remote_code=False, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{folder}: transformers cannot load it: {str(exc).splitlines()[0]}") from None


def load_family(module, folder: Path, device="cpu", dtype: str | None = None):
    """The ``LoadedRun`` of a family module that is a descriptor, a config and a weight map
    (``describe``, ``model_config``, ``rename``), as most are."""
    from . import hf_config

    raw = hf_config(folder)
    return build_run(folder, module.describe(raw, folder), module.model_config(raw, folder), module.rename(folder),
                     device, dtype)


def build_run(folder: Path, desc: Descriptor, model_cfg: ModelConfig, rename, device="cpu", dtype: str | None = None,
              unk_id: int | None = None):
    """Our Transformer with the folder's weights, its tokenizer and the masked process (or the AR
    objective for a causal model): the ``LoadedRun`` every command samples from."""
    from ...models.transformer import Transformer
    from ...processes.registry import PROCESSES

    if dtype is not None and dtype not in DTYPES:
        raise CheckpointError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    process_name = desc.process or ("ar" if desc.attention == "causal" else "masked")
    blocks = {"block_size": desc.block_size} if desc.block_size else {}
    cfg = Config(model=model_cfg, process=ProcessConfig(name=process_name, **blocks))
    tokenizer = tokenizer_of(folder, desc, model_cfg.vocab_size, unk_id)
    state = read_mapped(folder, rename, DTYPES.get(dtype) if dtype else None)
    with torch.device("meta"):  # no memory for weights about to be replaced
        model = Transformer(model_cfg, attn="causal" if desc.attention == "causal" else "full")
    if model_cfg.tie_embeddings:
        state.pop("head.weight", None)
        state["head.weight"] = state.get("embed.weight")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{folder}: the weights do not fit its config.json: {str(exc).splitlines()[0]} "
                              f"{str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else ''}") from None
    if model_cfg.tie_embeddings:
        model.head.weight = model.embed.weight
    model.reset_rope()
    model.to(device).eval()
    process = PROCESSES[process_name].load().from_config(cfg.process, tokenizer)
    run = LoadedRun(folder, cfg, tokenizer, model, process, f"{desc.family}:{folder.name}")
    run.descriptor = desc
    return run
