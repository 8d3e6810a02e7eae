"""Models: the transformer denoiser (diffusion and, in causal mode, the AR twin), the Gaussian
embedding model and the noisy-input classifier."""

from .transformer import KVCache, Transformer

__all__ = ["KVCache", "Transformer"]
