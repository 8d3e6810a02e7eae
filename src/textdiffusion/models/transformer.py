"""The denoiser: a pre-norm transformer with RoPE (or GPT-2's learned positions), SDPA attention
and optional adaLN time conditioning.

It knows nothing about diffusion: tokens (and optionally a time t) in, logits out.
``attn="full"`` makes it bidirectional (the diffusion denoiser); ``attn="causal"`` makes the very
same module the autoregressive twin, which can also decode with a KV cache. With ``input_dim``
it reads continuous vectors (B, T, input_dim) instead of token ids (the Gaussian embedding
process, models/continuous.py); everything after the input layer is the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ..config import ModelConfig
from ..errors import UsageError


def rope_tables(head_dim: int, length: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (length, head_dim/2) for rotary position embeddings (Su et al. 2021)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x1, x2) of channels by position-dependent angles. x: (B, H, T, D)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.type_as(x)


@dataclass
class KVCache:
    """Keys/values of the tokens seen so far, per layer, for incremental (AR) decoding: each call
    appends its chunk's keys/values. Rows of different lengths share it left-padded (``pad``)."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    pad: torch.Tensor | None = None  # (B,) leading columns of each row that are padding (rows of other lengths)

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these rows (the others have finished)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        if self.pad is not None:
            self.pad = self.pad[rows]

    def row(self, b: int, length: int | None = None) -> KVCache:
        """Row ``b`` alone, its first ``length`` positions (speculative decoding drops the refused
        drafts'). Not for a left-padded cache."""
        return KVCache([k[b : b + 1, :, :length] for k in self.keys], [v[b : b + 1, :, :length] for v in self.values])

    @staticmethod
    def stack(caches: list[KVCache]) -> KVCache:
        """Caches of one row each, all of one length, as one batch."""
        if not caches[0].keys:
            return KVCache()
        if len(caches) == 1:  # batch 1: no copy (a call appends to its own lists, not the row's)
            return KVCache(list(caches[0].keys), list(caches[0].values))
        layers = range(len(caches[0].keys))
        return KVCache([torch.cat([c.keys[i] for c in caches]) for i in layers],
                       [torch.cat([c.values[i] for c in caches]) for i in layers])

    def join(self, other: KVCache) -> None:
        """Append ``other``'s rows; the shorter side is left-padded (``pad``) to the longer."""
        n, m = self.length, other.length
        B1, B2 = self.keys[0].shape[0], other.keys[0].shape[0]
        device = self.keys[0].device
        pad_a = self.pad if self.pad is not None else torch.zeros(B1, dtype=torch.long, device=device)
        pad_b = other.pad if other.pad is not None else torch.zeros(B2, dtype=torch.long, device=device)
        width = max(n, m)

        def left(t, cols):
            return torch.nn.functional.pad(t, (0, 0, width - cols, 0))

        self.keys = [torch.cat((left(a, n), left(b, m))) for a, b in zip(self.keys, other.keys)]
        self.values = [torch.cat((left(a, n), left(b, m))) for a, b in zip(self.values, other.values)]
        self.pad = torch.cat((pad_a + width - n, pad_b + width - m))

    def past(self, layer: int) -> int:
        """Cached positions before the chunk (they all precede it)."""
        return self.keys[layer].shape[2] if layer < len(self.keys) else 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
            return k, v
        self.keys[layer] = torch.cat((self.keys[layer], k), dim=2)
        self.values[layer] = torch.cat((self.values[layer], v), dim=2)
        return self.keys[layer], self.values[layer]


@dataclass
class RowStore:
    """One row's cached keys/values, per layer (H, S, D): what a row carries between calls when
    the rows of a batch sit at different places (each its own block, window or length)."""

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    hidden: torch.Tensor | None = None  # (S, C) final hidden states: only a model with shifted logits keeps them

    @property
    def length(self) -> int:
        return self.keys[0].shape[1] if self.keys else 0


@dataclass
class Chunk:
    """Where a row's chunk of this call goes in its stored columns: at column ``start`` (also its
    first RoPE position), replacing ``replace`` stored columns (a window; 0: inserted, e.g.
    appended at the end); afterwards the row keeps ``store`` of the chunk's first keys appended
    to what it had (-1: the whole spliced sequence replaces the store). ``inside`` (n, n) bool is
    who attends to whom inside the chunk (None: everyone); the other columns are always seen."""

    start: int
    n: int
    replace: int = 0
    store: int = 0
    inside: torch.Tensor | None = None


class RowCache:
    """A call over rows at different places: row b's queries read its own ``RowStore`` with its
    chunk spliced in (``Chunk``), the rows right-padded to one width and the padding masked.
    Pass ``positions`` (B, T) with it (each chunk at its own RoPE positions)."""

    def __init__(self, stores: list[RowStore], chunks: list[Chunk], width: int, device):
        self.stores, self.chunks = stores, chunks
        self.old = [s.length for s in stores]
        sizes = [old - c.replace + c.n for old, c in zip(self.old, chunks)]
        S = max(sizes)
        mask = torch.zeros(len(stores), width, S, dtype=torch.bool, device=device)
        for b, (c, size) in enumerate(zip(chunks, sizes)):
            mask[b, :, :size] = True  # every real column (padding queries too: a row of no columns is NaN)
            if c.inside is not None:
                mask[b, : c.n, c.start : c.start + c.n] = c.inside
        self.mask = mask[:, None]  # (B, 1, T, S)
        steps = torch.arange(width, device=device)
        self.positions = torch.stack([c.start + torch.where(steps < c.n, steps, 0) for c in chunks])  # padding: anywhere

    def assemble(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """(keys, values, mask) for this layer's attention; stores what each chunk asks to keep."""
        ks, vs = [], []
        for b, (store, c) in enumerate(zip(self.stores, self.chunks)):
            if layer < len(store.keys):
                K, V = store.keys[layer], store.values[layer]
            else:
                K, V = k.new_zeros(k.shape[1], 0, k.shape[3]), v.new_zeros(v.shape[1], 0, v.shape[3])
            kb, vb = k[b, :, : c.n], v[b, :, : c.n]
            Kb = torch.cat((K[:, : c.start], kb, K[:, c.start + c.replace :]), dim=1)
            Vb = torch.cat((V[:, : c.start], vb, V[:, c.start + c.replace :]), dim=1)
            if c.store:
                kept = (Kb, Vb) if c.store < 0 else (torch.cat((K, kb[:, : c.store]), 1), torch.cat((V, vb[:, : c.store]), 1))
                if layer < len(store.keys):
                    store.keys[layer], store.values[layer] = kept
                else:
                    store.keys.append(kept[0])
                    store.values.append(kept[1])
            ks.append(Kb)
            vs.append(Vb)
        S = self.mask.shape[-1]
        K = torch.stack([F.pad(x, (0, 0, 0, S - x.shape[1])) for x in ks])
        V = torch.stack([F.pad(x, (0, 0, 0, S - x.shape[1])) for x in vs])
        return K, V, self.mask


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 (LLaMA, Qwen2, LLaDA)."""

    def __init__(self, dim: int, eps: float = 1e-5, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
        return h if self.weight is None else h * self.weight


def norm_layer(cfg: ModelConfig, affine: bool = True) -> nn.Module:
    if cfg.norm == "rms":
        return RMSNorm(cfg.d_model, cfg.norm_eps, elementwise_affine=affine)
    if not cfg.norm_bias and affine:  # a weight and no bias (MDLM)
        return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=False)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, elementwise_affine=affine)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_kv_head = cfg.n_kv_head or cfg.n_head  # grouped-query attention: fewer key/value heads
        self.head_dim = cfg.d_model // cfg.n_head
        self.causal = causal
        # one projection for queries, keys and values: (n_head + 2 n_kv_head) * head_dim outputs
        self.qkv = nn.Linear(cfg.d_model, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.proj_bias)
        self.dropout = cfg.dropout if cfg.attn_dropout is None else cfg.attn_dropout  # on the attention weights

    def _expand(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Key/value heads repeated for their groups of query heads (caches keep them unrepeated)."""
        if self.n_kv_head == self.n_head:
            return k, v
        g = self.n_head // self.n_kv_head
        return k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)

    def forward(self, x, cos, sin, layer: int, kv_cache, attn_mask: torch.Tensor | None = None):
        """``attn_mask`` (T, T) or per row (B, T, T) bool, True = may attend, is the pattern inside
        the chunk (e.g. block-causal, or no attention to padding); positions already in a KV cache
        precede the chunk and are always visible."""
        B, T, C = x.shape
        D, kv_width = self.head_dim, self.n_kv_head * self.head_dim
        q, k, v = self.qkv(x).split((C, kv_width, kv_width), dim=2)
        q = q.view(B, T, self.n_head, D).transpose(1, 2)  # (B, H, T, D)
        k, v = (z.view(B, T, self.n_kv_head, D).transpose(1, 2) for z in (k, v))  # (B, H_kv, T, D)
        if cos is not None:  # rotary positions (learned ones were added to the input)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if isinstance(kv_cache, RowCache):  # rows at different places, each with its own store
            k, v, mask = kv_cache.assemble(layer, k, v)
            y = F.scaled_dot_product_attention(q, *self._expand(k, v), attn_mask=mask)
            return self.proj(y.transpose(1, 2).reshape(B, T, C))
        past = 0
        if kv_cache is not None:
            past = kv_cache.past(layer)
            k, v = kv_cache.update(layer, k, v)
        mask, is_causal = attn_mask, False
        pad = getattr(kv_cache, "pad", None)
        if pad is not None:  # rows' caches left-padded to one length: no query sees a padding column
            inside = mask if mask is not None else torch.ones(T, T, dtype=torch.bool, device=x.device)
            if mask is None and self.causal:
                inside = inside.tril()
            pattern = torch.cat((torch.ones(*inside.shape[:-1], past, dtype=torch.bool, device=x.device), inside), dim=-1)
            seen = torch.arange(k.shape[2], device=x.device)[None, :] >= pad[:, None]  # (B, S)
            mask = (pattern & seen[:, None, :])[:, None]  # (B, 1, T, S)
        elif mask is None and self.causal and T > 1:
            # causal with a cache: new queries see all past keys and the causal part of their own chunk
            if past:
                mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            else:
                is_causal = True
        elif mask is not None and past:
            mask = torch.cat((torch.ones(*mask.shape[:-1], past, dtype=torch.bool, device=x.device), mask), dim=-1)
        if mask is not None and mask.dim() == 3:  # (B, T, S): one pattern per row, the same for every head
            mask = mask[:, None]
        k, v = self._expand(k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """GELU: proj(gelu(fc x)). SwiGLU (LLaMA, Qwen2, LLaDA): proj(silu(fc x) * up x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.mlp_hidden or cfg.mlp_ratio * cfg.d_model
        self.fc = nn.Linear(cfg.d_model, hidden, bias=cfg.mlp_bias)
        self.up = nn.Linear(cfg.d_model, hidden, bias=cfg.mlp_bias) if cfg.mlp == "swiglu" else None
        self.proj = nn.Linear(hidden, cfg.d_model, bias=cfg.mlp_bias)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        if self.up is not None:
            return self.drop(self.proj(F.silu(self.fc(x)) * self.up(x)))
        return self.drop(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-norm block; with time conditioning, adaLN-Zero shift/scale/gate (Peebles & Xie 2023)."""

    def __init__(self, cfg: ModelConfig, causal: bool):
        super().__init__()
        affine = not cfg.time_cond or cfg.ada_norm_weight
        self.norm1 = norm_layer(cfg, affine=affine)
        self.attn = Attention(cfg, causal)
        self.norm2 = norm_layer(cfg, affine=affine)
        self.mlp = MLP(cfg)
        self.ada = None
        if cfg.time_cond:
            self.ada = nn.Linear(cfg.cond_dim or cfg.d_model, 6 * cfg.d_model)  # zero-initialised by Transformer

    def forward(self, x, cos, sin, layer, kv_cache, c, attn_mask=None):
        if self.ada is None:
            x = x + self.attn(self.norm1(x), cos, sin, layer, kv_cache, attn_mask)
            return x + self.mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None, :].chunk(6, dim=-1)  # (B, 1, C) each
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1, cos, sin, layer, kv_cache, attn_mask)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


SIGMA_EPS = 1e-3  # SEDD's log-linear noise: sigma(1) = -log(1e-3)


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t in [0, 1] followed by a small MLP."""

    def __init__(self, dim: int, freq_dim: int = 256, scale: float = 1000.0):
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
        args = self.scale * t.float()[:, None] * freqs[None, :]  # (B, half), in float32 at least
        features = torch.cat((args.cos(), args.sin()), dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))  # a bf16 model (loaded as saved) takes bf16


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, attn: str = "full", input_dim: int | None = None):
        super().__init__()
        if attn not in ("full", "causal"):
            raise UsageError(f"attn must be 'full' or 'causal'; got {attn!r}")
        if cfg.vocab_size <= 0:
            raise UsageError("model.vocab_size must be set (it comes from the tokenizer)")
        self.cfg = cfg
        self.attn_mode = attn
        self.checkpointing = False  # train.activation_checkpointing
        causal = attn == "causal"
        # token ids -> vectors, or (continuous inputs) a linear map of the input vectors
        self.embed = nn.Linear(input_dim, cfg.d_model, bias=False) if input_dim else nn.Embedding(cfg.vocab_size, cfg.d_model)
        cond = cfg.cond_dim or cfg.d_model
        self.time = TimeEmbedding(cond, scale=cfg.time_scale) if cfg.time_cond else None
        # class labels (+1: the "no label" of classifier-free guidance), added to every position
        self.label = nn.Embedding(cfg.num_labels + 1, cfg.d_model) if cfg.num_labels else None
        # learned absolute positions (GPT-2), added to the input; otherwise RoPE in every attention
        self.pos = nn.Embedding(cfg.context, cfg.d_model) if cfg.positions == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg, causal) for _ in range(cfg.n_layer))
        self.norm = norm_layer(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.head_bias)
        # DiT's final layer: adaLN shift/scale of the final norm (zero-initialised below)
        self.final_ada = nn.Linear(cond, 2 * cfg.d_model) if cfg.final_ada and cfg.time_cond else None
        cos, sin = self._rope_tables()
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2 scaled init of residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))
        for ada in [b.ada for b in self.blocks] + [self.final_ada]:  # adaLN zero-init: identity at the start
            if ada is not None:
                nn.init.zeros_(ada.weight)
                nn.init.zeros_(ada.bias)
        if cfg.tie_embeddings and not input_dim:
            self.head.weight = self.embed.weight

    def reset_rope(self) -> None:
        """Recompute the RoPE tables (non-persistent buffers: a model built on the meta device, as
        loaders of large checkpoints do, has none until this runs)."""
        cos, sin = self._rope_tables()
        device = self.head.weight.device
        self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)

    def _rope_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.positions != "rope":  # empty tables: nothing rotates
            return torch.zeros(0), torch.zeros(0)
        return rope_tables(self.cfg.d_model // self.cfg.n_head, self.cfg.context, self.cfg.rope_base)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if not non_embedding:
            return n
        return n - self.embed.weight.numel() - (self.pos.weight.numel() if self.pos is not None else 0)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs (forward + backward) per token: 6N plus attention (PaLM appendix B).
        N counts the per-token matmuls only: not the embedding lookup, nor the time
        conditioning, which runs once per sequence."""
        c = self.cfg
        per_sequence = sum(p.numel() for b in self.blocks if b.ada is not None for p in b.ada.parameters())
        per_sequence += sum(p.numel() for p in self.time.parameters()) if self.time is not None else 0
        return 6.0 * (self.num_params() - per_sequence) + 12.0 * c.n_layer * c.d_model * seq_len

    def forward(self, tokens: torch.Tensor, t: torch.Tensor | None = None, *,
                kv_cache: KVCache | RowCache | None = None, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.hidden(tokens, t, kv_cache=kv_cache, positions=positions, attn_mask=attn_mask, labels=labels)
        if self.cfg.logits_shift:
            h = self.shift_back(h, kv_cache)
        logits = self.head(h)
        if self.head.weight.dtype in (torch.bfloat16, torch.float16):  # weights stored in half precision
            logits = logits.float()  # (public checkpoints): samplers compare and sum float32 probabilities
        return logits

    def shift_back(self, h: torch.Tensor, kv_cache) -> torch.Tensor:
        """For a model whose position i predicts token i + 1 (Dream, from its AR start): the hidden
        state that predicts each position's own token, h[i - 1] (position 0 keeps its own, as
        Dream's generate does). A row cache chunk starting at s reads h[s - 1] from its store (the
        hidden state of the pass that last computed it: as approximate as the cached keys)."""
        if kv_cache is None:
            return torch.cat((h[:, :1], h[:, :-1]), dim=1)
        if not isinstance(kv_cache, RowCache):
            raise UsageError("this model's logits are shifted (position i predicts token i + 1): "
                             "use a sampler without an appending KV cache (--kv-cache none, prefix or dual)")
        out = []
        for b, (store, c) in enumerate(zip(kv_cache.stores, kv_cache.chunks)):
            old = store.hidden if store.hidden is not None else h.new_zeros(0, h.shape[-1])
            hb = h[b, : c.n]
            spliced = torch.cat((old[: c.start], hb, old[c.start + c.replace :]))
            before = spliced[c.start - 1 : c.start] if c.start > 0 else hb[:1]
            out.append(F.pad(torch.cat((before, hb[:-1])), (0, 0, 0, h.shape[1] - c.n)))
            if c.store < 0:
                store.hidden = spliced
            elif c.store:
                store.hidden = torch.cat((old, hb[: c.store]))
        return torch.stack(out)

    def hidden(self, tokens: torch.Tensor | None, t: torch.Tensor | None = None, *,
               kv_cache: KVCache | RowCache | None = None, positions: torch.Tensor | None = None,
               attn_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
               embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Final (normalised) hidden states (B, T, C); ``forward`` maps them to logits (B, T, V).
        Inputs: tokens (B, T); or, built with ``input_dim``, vectors (B, T, input_dim); or ``embeds``
        (B, T, C), inputs already embedded (e.g. one-hot rows times the table, for gradients).
        ``t`` (B,) is used only with time conditioning; ``labels`` (B,) only by a class-conditional
        model (None or ``num_labels``: no label).

        ``kv_cache``: reuse the keys/values of other positions (the chunk starts at the cache's
        ``length``). ``positions`` (T,) or (B, T): explicit RoPE positions (block diffusion training reads
        two copies of a sequence at the same positions; rows of a batched AR decode sit at their own). ``attn_mask`` (T, T) or (B, T, T) bool: who
        attends to whom inside the chunk (default: everyone, or causal for the AR twin)."""
        B, T = (tokens if embeds is None else embeds).shape[:2]
        if positions is None and isinstance(kv_cache, RowCache):
            positions = kv_cache.positions
        start = 0
        if positions is None:
            start = kv_cache.length if kv_cache is not None else 0
            if start + T > self.cfg.context:
                raise UsageError(f"sequence of {start + T} tokens exceeds the model context {self.cfg.context}")
        elif int(positions.max()) >= self.cfg.context:
            raise UsageError(f"position {int(positions.max())} exceeds the model context {self.cfg.context}")
        cos = sin = None  # no rotary tables with learned positions
        if self.pos is None:
            if positions is None:
                cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
            else:
                cos, sin = self.rope_cos[positions], self.rope_sin[positions]
                if positions.dim() == 2:  # (B, T): each row at its own positions
                    cos, sin = cos[:, None], sin[:, None]
        x = self.embed(tokens) if embeds is None else embeds  # (B, T, C); embeds: inputs already embedded
        if self.pos is not None:  # learned positions: (T, C), or (B, T, C) for rows at their own
            x = x + self.pos(torch.arange(start, start + T, device=x.device) if positions is None else positions)
        if self.label is not None:
            if labels is None:
                labels = torch.full((B,), self.cfg.num_labels, dtype=torch.long, device=x.device)
            x = x + self.label(labels)[:, None, :]
        c = None
        if self.time is not None:
            if self.cfg.time_input == "zero":  # trained without time conditioning: it always saw 0
                t = torch.zeros(B, device=x.device)
            elif t is None:
                raise UsageError("this model is time-conditioned: pass t")
            elif self.cfg.time_input == "sigma":  # SEDD: the total noise at mask rate t
                t = -torch.log1p(-t.float().clamp(max=1.0 - SIGMA_EPS))
            c = F.silu(self.time(t.expand(B) if t.dim() == 0 else t))  # (B, C)
        recompute = self.checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None
        for i, block in enumerate(self.blocks):
            if recompute:  # activation checkpointing: keep each block's input only, recompute the rest in backward
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, i, None, c, attn_mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, i, kv_cache, c, attn_mask)
        x = self.norm(x)
        if self.final_ada is not None:
            shift, scale = self.final_ada(c)[:, None, :].chunk(2, dim=-1)
            x = x * (1 + scale) + shift
        return x
