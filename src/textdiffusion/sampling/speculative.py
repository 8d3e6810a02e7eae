"""Speculative decoding of the AR twin with a diffusion drafter: the AR model's own output
distribution (greedy: its own tokens), fewer AR calls.

Each round of a row (Leviathan et al. 2023; Chen et al. 2023, the rule DFlash uses with a
diffusion drafter):

1. the drafter proposes the next K tokens given the text so far: the K positions are masked and
   filled left to right in ``draft_steps`` chunks, one drafter call per chunk, every token of a
   chunk drawn independently from the drafter's distribution q_i (filtered like the target's:
   the same temperature, top-k and top-p);
2. the AR model reads the pending token and the K drafts in one KV-cached call, which gives its
   distribution p_i at every drafted position and p_K after the last;
3. draft i is kept with probability min(1, p_i(x) / q_i(x)), left to right; at the first refusal
   the token is drawn from the residual max(0, p_i - q_i) (normalised) and the round ends; if all
   K are kept, one more token is drawn from p_K. Each round adds 1 to K + 1 tokens.

Why the output is exactly the AR model's: at each position, kept-or-corrected tokens have the
distribution q·min(1, p/q) + (1 - sum min(p, q))·norm(max(0, p - q)) = min(p, q) + max(0, p - q) = p,
whatever q is, as long as x_i was drawn from q_i given everything to its left only. Left-to-right
chunks keep that true (a drafter that revealed later positions first would make x_i depend on
tokens to its right, and the rule would no longer be exact). Greedy (temperature 0): p and q are
one-hot, a draft is kept iff it is the AR model's argmax, and the correction is that argmax: the
AR sampler's tokens, token for token (up to float rounding of a K-token call against K one-token
calls, which only matters at exact ties).

Drafters: masked diffusion models (bidirectional; the masked positions read the whole prefix:
every call runs it) and block diffusion models (block-causal: a chunk never crosses a block
boundary; each row keeps an exact cache of the drafter's keys/values for the blocks wholly
before its first draft, which are final, so a call runs only the current block and the draft).
The AR model keeps its exact KV cache, cropped back to the accepted tokens after each round.

State machine (sampling/base.py): each row has its own AR cache, pending token and statistics; a
step runs one round for every unfinished row. Rows accept different numbers of tokens, so they
drift apart: the rows at the same length with the same settings are stepped together, their
caches stacked for the AR call (``draft_steps`` drafter calls and one AR call per group).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UsageError
from ..models.transformer import Chunk, KVCache, RowStore
from ..processes.block import block_causal_mask
from .base import Canvas, Generators, Row, Sampler, State, StepOutput, require_prompt_canvas
from .blocks import cached_call
from .filters import ban, draw_and_rank, filter_logits, sample_categorical, validate_sampling_args
from .remasking import masked_time

DRAFTERS = ("masked", "sedd-absorb", "block")  # processes whose models can fill masked positions given a prefix


class SpeculativeSampler(Sampler):
    name = "speculative"
    family = "speculative"

    def __init__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, bos_id: int = 0,
                 banned_ids: tuple[int, ...] = (), draft: str = "", draft_len: int = 8, draft_steps: int = 1,
                 draft_confidence: float = 0.0, draft_run=None, tokenizer=None):
        validate_sampling_args(temperature, top_k, top_p)
        if draft_len < 1 or draft_steps < 1:
            raise UsageError("--draft-len and --draft-steps must be at least 1")
        if draft_steps > draft_len:
            raise UsageError(f"--draft-steps ({draft_steps}) cannot exceed --draft-len ({draft_len}): "
                             f"each drafter call fills at least one token")
        self.temperature, self.top_k, self.top_p, self.bos_id = temperature, top_k, top_p, bos_id
        self.banned_ids = list(banned_ids)
        if not 0.0 <= draft_confidence <= 1.0:
            raise UsageError(f"--draft-confidence must be in [0, 1]; got {draft_confidence}")
        self.draft_len, self.draft_steps, self.draft_confidence = draft_len, draft_steps, draft_confidence
        draft_run = getattr(draft_run, "run", draft_run)  # a Pipeline: its run
        self.draft = draft  # the drafter's path ("" when a loaded run is given)
        self.drafter = draft_run if draft_run is not None else load_drafter(draft)
        if self.drafter.process.name not in DRAFTERS:
            raise UsageError(f"the drafter must be a masked or block diffusion model; {draft or 'the one given'} "
                             f"is {self.drafter.process.name!r}")
        if tokenizer is not None and getattr(self.drafter, "tokenizer", None) is not None:
            same_tokenizer(tokenizer, self.drafter.tokenizer, draft or "the drafter")

    def start(self, model, process, canvas: Canvas, steps: int | None = None, gen: Generators = None) -> State:
        """``steps`` is accepted for a uniform signature: a row takes as many rounds as it needs.
        The prompt but its last token is read here (prefill, one call); that token is each row's
        pending one: the next AR call reads it with the drafts."""
        require_prompt_canvas(canvas, "speculative decoding (an AR target)")
        P, total = canvas.prompt_length, canvas.tokens.shape[1]
        drafter = self.drafter
        if drafter.model.cfg.vocab_size != model.cfg.vocab_size:
            raise UsageError(f"the drafter has {drafter.model.cfg.vocab_size} tokens and the AR model "
                             f"{model.cfg.vocab_size}: they must share a tokenizer")
        if total > drafter.model.cfg.context:
            raise UsageError(f"prompt plus length ({total} tokens) exceeds the drafter's context "
                             f"({drafter.model.cfg.context} tokens)")
        device = canvas.tokens.device
        drafter = self.drafter_on(device)
        state = self._rows(process, canvas, total - P, gen, draw=False)
        B = canvas.tokens.shape[0]
        seq = canvas.tokens[:, :P] if P else torch.full((B, 1), self.bos_id, dtype=torch.long, device=device)
        kv = KVCache()  # no prompt: a document begins (the AR twin reads end-of-text first)
        if seq.shape[1] > 1:
            model(seq[:, :-1], kv_cache=kv)
        state.calls = int(seq.shape[1] > 1)
        for b, r in enumerate(state.rows):
            r.data.update(kv=kv.row(b), pending=seq[b, -1:].clone(), P=P, rounds=0, accepted=0, drafted=0,
                          target_calls=state.calls, draft_calls=0, store=RowStore(), drafter=drafter)
        return state

    def step(self, state: State, model) -> StepOutput:
        """One round for every unfinished row; rows at the same length with the same settings
        (of one request or of several a server batches) share their drafter calls and their AR call."""
        changed, dists = {}, {}
        groups: dict = {}
        for r in state.active():
            n = r.data["P"] + r.step  # tokens known
            key = (n, min(r.sampler.draft_len, r.steps - r.step), id(r.data["drafter"]), r.sampler.batch_key())
            groups.setdefault(key, []).append(r)
        for (n, k, _, _), rows in groups.items():
            smp = rows[0].sampler
            drafts, log_q, calls, lengths = smp.propose(torch.stack([r.tokens[:n] for r in rows]), k,
                                                        [r.gen for r in rows], [r.data["store"] for r in rows],
                                                        rows[0].data["drafter"])
            kv = KVCache.stack([r.data["kv"] for r in rows])
            cached = kv.length
            pending = torch.stack([r.data["pending"] for r in rows])
            logits = model(torch.cat((pending, drafts), 1), kv_cache=kv)  # (G, k + 1, V)
            state.calls += calls + 1
            log_p = filter_logits(ban(logits, smp.banned_ids), smp.temperature, smp.top_k, smp.top_p)
            verdicts = accept(drafts, log_q, log_p, [r.gen for r in rows], lengths)
            for i, (r, (kept, new)) in enumerate(zip(rows, verdicts)):
                d = r.data
                d["kv"] = kv.row(i, cached + 1 + kept)  # the pending token and the kept drafts
                out = torch.cat((drafts[i, :kept], new[None]))[: r.steps - r.step]  # the last round may end early
                r.tokens = r.tokens.clone()
                r.tokens[n : n + out.shape[0]] = out
                d["pending"] = out[-1:].clone()
                d["rounds"], d["accepted"], d["drafted"] = d["rounds"] + 1, d["accepted"] + kept, d["drafted"] + lengths[i]
                d["draft_calls"], d["target_calls"] = d["draft_calls"] + calls, d["target_calls"] + 1
                r.step, r.nfe = r.step + out.shape[0], r.nfe + calls + 1
                r.done = r.step >= r.steps
                mask = torch.zeros_like(r.fixed)
                mask[n : n + out.shape[0]] = True
                changed[r], dists[r] = mask, (n, log_p[i, : out.shape[0]])
        state.stats = statistics(state.rows)
        return state.output(changed, dists)

    def drafter_on(self, device):
        """The drafter on ``device``: the one given or loaded if it is there; else, for a drafter
        named by its path, its copy loaded there (``load_drafter``: once per path and device). A
        drafter shared by others is never moved: one given loaded on another device is refused."""
        if next(self.drafter.model.parameters()).device == torch.device(device):
            return self.drafter
        if not self.draft:
            raise UsageError(f"the drafter is on {next(self.drafter.model.parameters()).device} and the AR model on "
                             f"{device}: load the drafter on {device}")
        return load_drafter(self.draft, device)

    def batch_key(self) -> tuple:
        """What rows must share to be drafted and verified in one call (with the drafter itself,
        which each row keeps): the sampling settings (each row still draws with its own generator)."""
        return (self.draft_len, self.draft_steps, self.draft_confidence, self.temperature,
                self.top_k, self.top_p, tuple(self.banned_ids))

    def propose(self, prefix: torch.Tensor, k: int, gens: list, stores: list[RowStore] | None = None,
                drafter=None) -> tuple[torch.Tensor, torch.Tensor, int, list[int]]:
        """For (G, n) prefixes: (G, k') drafted tokens, (G, k', V) the log-probabilities each was
        drawn from (row i with its own generator), the drafter calls made, and each row's own
        draft length (k' = the longest: all k without --draft-confidence). ``stores``: each row's
        cache of a block drafter's finished blocks (None: every call runs the whole prefix);
        ``drafter``: the run that drafts (default: this sampler's own)."""
        d = drafter or self.drafter
        process, model, (G, n) = d.process, d.model, prefix.shape
        x = torch.cat((prefix, torch.full((G, k), process.mask_id, dtype=torch.long, device=prefix.device)), 1)
        log_q = []
        b = getattr(process, "block_size", None)
        spans, calls, lengths = chunks(n, k, self.draft_steps, b), 0, [k] * G
        for lo, hi in spans:
            if b:  # block-causal: the chunk's block, its later positions still masked; nothing after it
                stop = min(-(-hi // b) * b, n + k)
                if stores is None:
                    logits = model(x[:, :stop], None, attn_mask=block_causal_mask(stop, b, x.device))[:, lo:hi]
                else:  # exact: the blocks wholly before the first draft are final; they are stored once
                    keep, starts = (n // b) * b, [s.length for s in stores]
                    parts = [Chunk(st, stop - st, store=max(keep - st, 0),
                                   inside=block_causal_mask(stop - st, b, x.device, st)) for st in starts]
                    out = cached_call(model, stores, parts, [x[i, st:stop] for i, st in enumerate(starts)], None)
                    logits = torch.stack([o[lo - st : hi - st] for o, st in zip(out, starts)])
            else:
                t = masked_time(process, x, torch.zeros_like(x, dtype=torch.bool))
                logits = model(x, t)[:, lo:hi]
            lq, _ = draw_and_rank(process, logits, self)
            x[:, lo:hi] = torch.stack([sample_categorical(lq[i], g) for i, g in enumerate(gens)])
            log_q.append(lq)
            calls += 1
            if self.draft_confidence:  # a row's draft ends before its first unconfident position
                for i, c in enumerate(self._confident(logits)):
                    if lengths[i] == k and c < hi - lo:
                        lengths[i] = lo - n + c
                if all(m < k for m in lengths):  # every row's draft has ended: no later chunk
                    break
        m = max(lengths)  # the AR call verifies up to the longest; a row accepts within its own
        return x[:, n : n + m], torch.cat(log_q, 1)[:, :m], calls, lengths

    def _confident(self, logits: torch.Tensor) -> list[int]:
        """Per row, how many of a chunk's positions come before the first where the drafter's own
        top probability is below --draft-confidence. Exact whatever it cuts: it reads the
        drafter's distributions, never the tokens drawn from them (a draft ended because of its
        own value would no longer be a draw from q)."""
        low = ban(logits.float(), self.banned_ids).softmax(-1).amax(-1) < self.draft_confidence  # (G, m)
        return torch.where(low.any(1), low.int().argmax(1), low.shape[1]).tolist()


def chunks(n: int, k: int, steps: int, block: int | None) -> list[tuple[int, int]]:
    """Positions n..n+k cut into ``steps`` left-to-right chunks of near-even size (earlier ones
    the larger; no more chunks than positions: the last round may be short), each also cut at
    block boundaries (a block drafter fills one block per call)."""
    steps = min(steps, k)
    base, extra = divmod(k, steps)
    out, lo = [], n
    for i in range(steps):
        hi = lo + base + (i < extra)
        while block and lo // block != (hi - 1) // block:
            cut = (lo // block + 1) * block
            out.append((lo, cut))
            lo = cut
        out.append((lo, hi))
        lo = hi
    return out


def accept(drafts: torch.Tensor, log_q: torch.Tensor, log_p: torch.Tensor, gens: list,
           lengths: list[int] | None = None) -> list[tuple[int, torch.Tensor]]:
    """The speculative-sampling rule for G rows: per row (drafts kept, the token after them: at
    the first refusal a draw from the residual max(0, p - q) normalised, else a draw from the
    distribution after the last draft). ``drafts`` (G, k); ``log_q`` (G, k, V) the distributions
    they were drawn from; ``log_p`` (G, k + 1, V) the target's (position j: after j drafts);
    ``lengths``: row i's own drafts are its first lengths[i] (default all k). Row i draws with
    ``gens[i]``."""
    G, K = drafts.shape
    p, q = log_p.double().exp(), log_q.double().exp()
    px = p[:, :K].gather(-1, drafts[..., None]).squeeze(-1)  # (G, K)
    qx = q.gather(-1, drafts[..., None]).squeeze(-1)
    out = []
    for i, gen in enumerate(gens):
        k = K if lengths is None else lengths[i]
        u = torch.rand(k, generator=gen, dtype=torch.float64, device=p.device)
        refused = (u * qx[i, :k] >= px[i, :k]).nonzero()  # kept iff u < p / q (q > 0: the draft was drawn from it)
        if not len(refused):
            out.append((k, sample_categorical(log_p[i, k], gen)))
            continue
        j = int(refused[0])
        residual = (p[i, j] - q[i, j]).clamp_min(0.0)
        if float(residual.sum()) <= 0.0:  # p == q to rounding: nothing to correct toward
            residual = p[i, j]
        out.append((j, torch.multinomial(residual, 1, generator=gen)[0]))
    return out


def statistics(rows: list[Row]) -> dict:
    """Mean drafts proposed and accepted per round, tokens per AR call, drafter and AR calls (all rows)."""
    d = [r.data for r in rows]
    rounds, kept = sum(x["rounds"] for x in d), sum(x["accepted"] for x in d)
    proposed = sum(x["drafted"] for x in d)
    tokens = sum(r.step for r in rows)
    target, drafted = sum(x["target_calls"] for x in d), sum(x["draft_calls"] for x in d)
    return {"rounds": rounds, "mean_accepted": kept / max(rounds, 1), "mean_drafted": proposed / max(rounds, 1),
            "tokens_per_target_call": tokens / max(target, 1), "target_calls": target, "draft_calls": drafted}


_DRAFTERS: dict = {}


def load_drafter(path: str, device="cpu"):
    """The drafter run at ``path`` on ``device`` (loaded once per process, path and device: a
    server builds a sampler per request; a model on one device is never moved to another)."""
    if not path:
        raise UsageError("the speculative sampler needs a drafter: --draft RUN_OR_MODEL_DIR (a masked or block "
                         "diffusion model with the AR model's tokenizer)")
    from ..runs import load_run

    key = (str(Path(path).resolve()), str(torch.device(device)))
    if key not in _DRAFTERS:
        _DRAFTERS[key] = load_run(path, device)
    return _DRAFTERS[key]


def same_tokenizer(target, drafter, what: str) -> None:
    if target.vocab_size != drafter.vocab_size or any(
            target.decode([i]) != drafter.decode([i]) for i in range(target.vocab_size)):
        raise UsageError(f"{what} has another tokenizer than the AR model ({drafter.vocab_size} against "
                         f"{target.vocab_size} tokens): draft with a model trained on the same tokenizer")
