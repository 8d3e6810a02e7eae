"""Conditioning, classifier-free guidance (Ho & Salimans 2022) and classifier guidance, for every
process.

A condition is a class label (runs trained on ``{"text", "label"}`` JSONL with ``data.labels``;
the label's embedding is added at every position) or an SFT prompt. During training it is
dropped with probability ``train.cond_drop`` (labels: they become "no label") or
``train.prompt_drop`` (SFT, off by default: the prompt's tokens become the pad token), so one
network learns both p(x | c) and p(x).

At sampling time ``Conditioned(model, labels, scale=w)`` stands in for the network: each call runs
the conditional and the unconditional input as one batch of 2B and returns

    logits = l_c + w (l_c - l_u)        (w = 0: plain conditional sampling)

on the raw logits (as LLaDA does), before each process's own normalisation, so the same wrapper
steers masked, uniform, score-entropy and Gaussian models (for the Gaussian process the guided
logits give the guided x0 estimate, CDCD / Plaid style). One guided call is one NFE of twice the
batch. Guidance reruns the whole input, so it does not combine with a KV cache.

``ClassifierGuided`` steers an unconditional run with a separately trained classifier of its
noisy inputs (``train-classifier``): the gradient of log p(label | x_t) reweights the denoiser's
token logits (see the class).
"""

from __future__ import annotations

import math

import torch

from ..errors import UsageError
from ..processes.base import row_rand


def null_label(model) -> int:
    return model.cfg.num_labels


class Conditioned:
    """The denoiser with a condition bound (``labels`` (B,) ids, or None) and guidance ``scale``.
    ``null_positions`` (B, T) bool: for prompt guidance, the positions replaced by ``null_token``
    in the unconditional input."""

    def __init__(self, model, labels: torch.Tensor | None = None, scale: float = 0.0,
                 null_positions: torch.Tensor | None = None, null_token: int | None = None):
        if not math.isfinite(scale) or scale < 0:
            raise UsageError(f"the guidance scale must be >= 0 and finite; got {scale}")
        if scale and labels is None and null_positions is None:
            raise UsageError("guidance needs a condition: a label, or a prompt")
        if labels is not None and not model.cfg.num_labels:
            raise UsageError("this run was not trained with labels (train on JSONL with --set data.labels=true)")
        self.model, self.labels, self.scale = model, labels, scale
        self.null_positions, self.null_token = null_positions, null_token

    def __getattr__(self, name):  # cfg, parameters(), embeddings(), ... of the wrapped model
        return getattr(self.model, name)

    def _nulls(self, x: torch.Tensor) -> torch.Tensor:
        """``null_positions`` for the (B, T) rows of this call. Every row's prompt is the same, so
        a call over some of the rows (a sampler's cache re-runs only the rows that changed) or
        right-padded wider (rows batched with longer ones) takes the first row's positions; it
        failed with a shape error for guided requests of n >= 2."""
        pos = self.null_positions.to(x.device)
        if pos.shape[0] != x.shape[0]:
            if not bool((pos == pos[:1]).all()):
                raise RuntimeError("a guided call over some rows of a batch whose rows have other prompts")
            pos = pos[:1].expand(x.shape[0], -1)
        T = x.shape[1]
        if pos.shape[1] < T:
            pos = torch.cat([pos, pos.new_zeros(pos.shape[0], T - pos.shape[1])], dim=1)
        return pos[:, :T]

    def _call(self, x, t, args, kwargs, labels):
        if labels is not None:
            kwargs = {**kwargs, "labels": labels}
        return self.model(x, t, *args, **kwargs)

    def __call__(self, x: torch.Tensor, t: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        labels = None if self.labels is None else self.labels.to(x.device).expand(x.shape[0])
        if not self.scale:
            return self._call(x, t, args, kwargs, labels)
        if kwargs.get("kv_cache") is not None:
            raise UsageError("guidance reruns the whole input at every call, so it cannot use a KV cache "
                             "(use --kv-cache none, or another sampler)")
        B = x.shape[0]
        x_u = x
        if self.null_positions is not None:
            if x.dim() != 2:
                raise UsageError("prompt guidance needs a discrete model (the Gaussian process takes label guidance)")
            x_u = torch.where(self._nulls(x), torch.full_like(x, self.null_token), x)
        both_labels = None
        if labels is not None:
            both_labels = torch.cat([labels, torch.full_like(labels, null_label(self.model))])
        t2 = t if t is None or t.dim() == 0 else torch.cat([t, t])
        args2 = tuple(torch.cat([a, a]) if isinstance(a, torch.Tensor) else a for a in args)
        if kwargs.get("attn_mask") is not None and kwargs["attn_mask"].dim() == 3:  # one per row: both halves
            kwargs = {**kwargs, "attn_mask": torch.cat([kwargs["attn_mask"]] * 2)}
        out = self._call(torch.cat([x, x_u]), t2, args2, kwargs, both_labels)
        cond, uncond = out[:B], out[B:]
        return cond + self.scale * (cond - uncond)


def drop_condition(batch: torch.Tensor, fixed: torch.Tensor | None, labels: torch.Tensor | None, p: float,
                   gen: torch.Generator | None, pad_id: int, null: int):
    """Training: drop each row's condition with probability ``p`` (labels -> ``null``; without
    labels, the prompt's fixed positions after the first -> ``pad_id``). Returns (batch, labels)."""
    if p <= 0 or (labels is None and fixed is None):
        return batch, labels
    drop = row_rand((batch.shape[0],), gen, batch.device) < p  # the whole batch's draw (RowShard)
    if labels is not None:
        return batch, torch.where(drop, torch.full_like(labels, null), labels)
    prompt = fixed.clone()
    prompt[:, 0] = False  # the leading end-of-text stays: "a document begins"
    return torch.where(drop[:, None] & prompt, torch.full_like(batch, pad_id), batch), labels


def guided_model(run, label: str | None = None, guidance: float = 0.0, prompt_positions: torch.Tensor | None = None,
                 classifier=None):
    """The network a sampler should call for ``run``: itself, or bound to a class label and/or
    steered by classifier-free guidance of scale ``guidance`` (on the label, or else on the
    prompt at ``prompt_positions`` for runs instruction-tuned with prompt dropping), or, given a
    ``classifier`` (a LoadedClassifier of this run's noisy inputs), by classifier guidance
    toward ``label``."""
    if classifier is not None:
        if label is None:
            raise UsageError(f"classifier guidance needs --label (one of {', '.join(classifier.labels)})")
        if classifier.info.get("process") != run.process.name or classifier.model.cfg.vocab_size != run.tokenizer.vocab_size:
            raise UsageError(f"the classifier was trained on the noisy inputs of a {classifier.info.get('process')} run "
                             f"with another tokenizer or process ({classifier.run_dir}); train one for this run")
        return ClassifierGuided(run.model, classifier.model, run.process, classifier.label_id(label), guidance)
    if label is None and not guidance:
        return run.model
    labels = torch.tensor([run.label_id(label)]) if label is not None else None
    if guidance and labels is None:
        if run.labels:
            raise UsageError(f"guidance on a labelled run needs --label (one of {', '.join(run.labels)})")
        if not (run.cfg.data.sft and run.cfg.train.prompt_drop > 0):
            raise UsageError("guidance needs a condition the run learned to drop: a label (--labels) "
                             "or a prompt (train --sft --set train.prompt_drop=0.1)")
        if prompt_positions is None or not bool(prompt_positions.any()):
            raise UsageError("prompt guidance needs a prompt")
    return Conditioned(run.model, labels, guidance, None if labels is not None else prompt_positions,
                       run.tokenizer.pad_id)


class ClassifierGuided:
    """Classifier guidance: the denoiser's logits plus ``scale`` times the first-order change of
    log p(label | x_t) when each position takes each token (Nisonoff et al. 2024's Taylor-approximated
    guidance for discrete diffusion; Dhariwal & Nichol's gradient guidance for the Gaussian process,
    here projected on the token embeddings):

        discrete:  logits[l, v] += w * d log p(y | x_t) / d onehot[l, v]
        Gaussian:  logits[l, v] += w * (d log p(y | x) / d x_l) . (s_t alpha_t e_v)

    where x = s_t z_t is what the network reads, so s_t alpha_t e_v is how x moves when token v is
    placed at l. Terms that do not depend on v cancel in the softmax. ``classifier`` is a
    NoisyClassifier trained on this run's noisy inputs (``train-classifier``)."""

    def __init__(self, model, classifier, process, label: int, scale: float):
        if not math.isfinite(scale) or scale < 0:
            raise UsageError(f"the guidance scale must be >= 0 and finite; got {scale}")
        self.model, self.classifier, self.process, self.label, self.scale = model, classifier, process, label, scale

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x: torch.Tensor, t: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        logits = self.model(x, t, *args, **kwargs)
        if not self.scale:
            return logits
        if t is None:
            raise UsageError("classifier guidance needs the diffusion time (not available to this sampler)")
        t = t.expand(x.shape[0]) if t.dim() == 0 else t
        with torch.enable_grad():
            if x.dim() == 2:  # token ids
                onehot = torch.nn.functional.one_hot(x, logits.shape[-1]).float().requires_grad_(True)
                log_p = self.classifier(None, t, onehot=onehot).log_softmax(-1)[:, self.label].sum()
                bonus = torch.autograd.grad(log_p, onehot)[0]  # (B, T, V)
            else:  # the Gaussian process's scaled noisy embeddings
                inputs = x.detach().float().requires_grad_(True)
                log_p = self.classifier(inputs, t).log_softmax(-1)[:, self.label].sum()
                grad = torch.autograd.grad(log_p, inputs)[0]  # (B, T, d)
                alpha, _ = self.process.alpha_sigma(t)
                move = (alpha * self.process.input_scale(t)).float().view(-1, 1, 1)
                bonus = move * (grad @ self.model.embeddings().detach().T)  # (B, T, V)
        return logits + self.scale * bonus.to(logits.dtype)
