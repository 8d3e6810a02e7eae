"""Models: the transformer denoiser (diffusion and, in causal mode, the AR twin), the Gaussian
embedding model and the noisy-input classifier."""

from .transformer import KVCache, Transformer

__all__ = ["KVCache", "Transformer", "parameter_count"]


def parameter_count(model_cfg, vocab_size: int, embed_dim: int | None = None, self_cond: bool = False) -> int:
    """Parameters of the network ``model_cfg`` describes (with ``embed_dim``: the Gaussian
    process's embedding denoiser), counted on the module itself built on the meta device (exact
    for every variant; nothing is allocated): built with one layer and with two, since the layers
    are alike and a million of them would take minutes to build. Tied weights count once."""
    import dataclasses

    import torch

    def count(layers: int) -> int:
        cfg = dataclasses.replace(model_cfg, vocab_size=vocab_size, n_layer=layers)
        with torch.device("meta"):
            if embed_dim:
                from .continuous import EmbeddingDenoiser

                net = EmbeddingDenoiser(cfg, embed_dim, self_cond)
            else:
                net = Transformer(cfg)
        return sum(p.numel() for p in net.parameters())

    one = count(1)
    return one + (model_cfg.n_layer - 1) * (count(2) - one)
