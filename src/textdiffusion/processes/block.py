"""Block diffusion (BD3-LM; Arriola et al. 2025, "Block Diffusion: Interpolating Between
Autoregressive and Diffusion Language Models"): autoregressive over blocks of ``block_size``
tokens, masked diffusion inside each block.

    -log p(x) = sum_b -log p(x_b | x_<b)  <=  sum_b NELBO_MDLM(x_b | x_<b)

Each block gets its own time t_b and is masked with probability 1 - alpha(t_b); its denoiser sees
the block's noisy tokens and the clean blocks before it. Training does every block in one call
on the concatenation [x_t ; x0] (2L tokens, the two copies at the same positions) with the
block-causal mask:

    x_t block i attends to  x_t block i  and  x0 blocks j < i
    x0  block i attends to  x0 blocks j <= i             (so the x0 copy is a block-causal LM)

Block size 1 is an autoregressive model (one masked token: the bound is exactly its NLL); one
block of the whole context is plain MDLM. Samplers decode block by block with an exact KV cache
of the finished blocks (sampling/blocks.py). The model is not time-conditioned (MDLM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UsageError
from .base import LossOutput, keep_clean, row_rand, scored, stratified_uniform
from .masked import MaskedProcess


def block_causal_mask(length: int, block_size: int, device=None, offset: int = 0) -> torch.Tensor:
    """(L, L) bool: position i may attend to j when j's block is not after i's. ``offset`` is the
    absolute position of the first row (blocks are counted from position 0)."""
    blk = (torch.arange(length, device=device) + offset) // block_size
    return blk[None, :] <= blk[:, None]


class BlockDiffusionProcess(MaskedProcess):
    name = "block"

    @classmethod
    def from_config(cls, p, tokenizer) -> BlockDiffusionProcess:
        return cls(tokenizer.vocab_size, tokenizer.mask_id, p.block_size, schedule=p.schedule, antithetic=p.antithetic)

    def __init__(self, vocab_size: int, mask_id: int, block_size: int, schedule: str = "loglinear",
                 antithetic: bool = True, eps: float = 1e-3):
        super().__init__(vocab_size, mask_id, schedule=schedule, antithetic=antithetic, eps=eps)
        if block_size <= 0:
            raise UsageError("block_size must be positive")
        self.block_size = block_size
        self._masks: dict = {}

    def training_mask(self, length: int, device) -> torch.Tensor:
        """(2L, 2L) bool mask over [x_t ; x0] (see the module docstring)."""
        key = (length, str(device))
        if key not in self._masks:
            blk = torch.arange(length, device=device) // self.block_size
            same = blk[:, None] == blk[None, :]
            before = blk[None, :] < blk[:, None]
            upto = blk[None, :] <= blk[:, None]
            top = torch.cat((same, before), dim=1)
            bottom = torch.cat((torch.zeros_like(same), upto), dim=1)
            self._masks[key] = torch.cat((top, bottom), dim=0)
        return self._masks[key]

    def _token_times(self, batch: int, length: int, gen, device) -> torch.Tensor:
        """(B, L) one t per block, stratified over all blocks of the batch."""
        n_blocks = -(-length // self.block_size)
        u = stratified_uniform(batch * n_blocks, self.antithetic, gen, device, per_row=n_blocks).view(batch, n_blocks)
        t = self.eps + (1.0 - self.eps) * u
        return t.repeat_interleave(self.block_size, dim=1)[:, :length]

    def _masked_nll(self, model, xt: torch.Tensor, x0: torch.Tensor, t=None) -> torch.Tensor:
        """(B, L) -log p_theta(x0^l | x_t block, clean blocks before) at masked positions."""
        B, L = x0.shape
        pos = torch.arange(L, device=x0.device)
        logits = model(torch.cat((xt, x0), dim=1), None, positions=torch.cat((pos, pos)),
                       attn_mask=self.training_mask(L, x0.device))[:, :L]
        nll = F.cross_entropy(self.log_probs(logits).transpose(1, 2), x0, reduction="none")
        return nll * (xt == self.mask_id)

    def _corrupt_tokens(self, x0: torch.Tensor, t: torch.Tensor, gen) -> torch.Tensor:
        u = row_rand(x0.shape, gen, x0.device)
        return torch.where(u < 1.0 - self.schedule.alpha(t), torch.full_like(x0, self.mask_id), x0)

    def _weighted_nll(self, model, x0: torch.Tensor, gen, keep=None) -> torch.Tensor:
        t = self._token_times(*x0.shape, gen, x0.device)
        xt = keep_clean(self._corrupt_tokens(x0, t, gen), x0, keep)
        return (1.0 - self.eps) * self.schedule.weight(t) * self._masked_nll(model, xt, x0)

    def loss(self, model, batch: torch.Tensor, gen: torch.Generator | None = None,
             fixed: torch.Tensor | None = None) -> LossOutput:
        keep, loss_mask = scored(fixed)
        return LossOutput.mean_over(self._weighted_nll(model, batch[:, 1:], gen, keep), loss_mask)

    @torch.no_grad()
    def nelbo(self, model, batch: torch.Tensor, gen: torch.Generator | None = None,
              num_samples: int = 1) -> torch.Tensor:
        """(num_samples, B) NELBO estimates in nats: every block's integral over [eps, 1] plus its
        reconstruction term at eps."""
        x0 = batch[:, 1:]
        eps_t = torch.full(x0.shape, self.eps, device=x0.device)
        out = []
        for _ in range(num_samples):
            diffusion = self._weighted_nll(model, x0, gen).sum(1)
            x_eps = self._corrupt_tokens(x0, eps_t, gen)
            recon = self._masked_nll(model, x_eps, x0).sum(1) if (x_eps == self.mask_id).any() else 0.0
            out.append(diffusion + recon)
        return torch.stack(out)
