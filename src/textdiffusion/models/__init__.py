"""Models: the transformer denoiser and the autoregressive objective on the same backbone."""

from .transformer import KVCache, Transformer

__all__ = ["KVCache", "Transformer"]
