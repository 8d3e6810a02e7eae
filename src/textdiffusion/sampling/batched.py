"""The pieces of a step that run over every row of a batch at once, each row drawing its random
numbers from its own generator: the same numbers, in the same order, as the row stepped alone.

A row's draws stay its own because every draw a step makes is split in two. The random numbers
are drawn per row, with the row's generator, straight into the row's slice of one batch tensor
(a few microseconds a row). Everything else (the filtering, the exponentials' division, the
argmax, the comparisons) is one tensor operation over the whole batch.

``torch.multinomial(p, 1, generator=g)`` draws exponentials ``q`` of p's shape with ``g`` and
returns ``argmax(p / q)`` (ATen's one-sample path, the exponential form of the Gumbel-max
trick): ``categorical`` does exactly that with each row's generator on its own rows, so a batched
draw is the per-row ``sample_categorical`` to the token, and leaves every generator where the
per-row draw leaves it.

"The same numbers as alone" needs each row's own generator (``row_generators`` gives every row
one). Rows that share one generator (the global one: ``gen=None``) draw from the same law, but
a batched step draws all their uniforms before all their tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import HOLE, Row, padding_mask


def stack_tokens(rows: Sequence[Row], lengths: Sequence[int] | None = None) -> torch.Tensor:
    """(B, T) the rows' tokens, right-padded with HOLE to the longest (a padded position is
    neither masked nor text); ``lengths``: the rows' lengths, when the caller has them."""
    lengths = [r.length for r in rows] if lengths is None else lengths
    T = max(lengths)
    if min(lengths) == T:
        return torch.stack([r.tokens for r in rows])
    return torch.stack([F.pad(r.tokens, (0, T - n), value=HOLE) for r, n in zip(rows, lengths)])


def stack_fixed(rows: Sequence[Row], T: int, lengths: Sequence[int] | None = None) -> torch.Tensor:
    """(B, T) the rows' fixed positions; padding counts as fixed (never drawn, never revealed)."""
    lengths = [r.length for r in rows] if lengths is None else lengths
    if min(lengths) == T:
        return torch.stack([r.fixed for r in rows])
    return torch.stack([F.pad(r.fixed, (0, T - n), value=True) for r, n in zip(rows, lengths)])


def network_call(model, rows: Sequence[Row], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B, T, V) the network's output for the (B, T) ``x`` of ``rows`` (right-padded rows: padding
    fed as id 0, and no position attends to it), at times ``t``."""
    T = x.shape[1]
    if all(r.length == T for r in rows):
        return model(x, t)
    return model(x.clamp_min(0), t, attn_mask=padding_mask([r.length for r in rows], T, x.device))


def compact(rows: Sequence[Row]) -> None:
    """Keep no call's whole output alive for a few rows: the rows still holding an output of which
    fewer than a quarter of its rows are used get a copy of their own rows of it (a row that kept
    its prediction through several steps would otherwise keep every row of that call), so what
    the caches hold is at most four times what they use."""
    users: dict[int, list[Row]] = {}
    for r in rows:
        if r.data.get("source") is not None:
            users.setdefault(id(r.data["source"][0]), []).append(r)
    for group in users.values():
        out = group[0].data["source"][0]
        if 4 * len(group) >= out.shape[0]:
            continue
        kept = out[torch.tensor([r.data["source"][1] for r in group], device=out.device)]
        for i, r in enumerate(group):
            r.data["source"] = (kept, i)


def gather_cached(rows: Sequence[Row], b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(N, V) the cached network output of row ``b[n]`` at position ``p[n]``: each row's cache is
    row ``i`` of the output of the call it last took part in (``row.data["source"] = (out, i)``),
    gathered with one index per call rather than one per row."""
    sources: dict[int, int] = {}
    group, index = [], []
    for r in rows:
        out, i = r.data["source"]
        group.append(sources.setdefault(id(out), len(sources)))
        index.append(i)
    index_t = torch.tensor(index, device=b.device)
    if len(sources) == 1:
        return rows[0].data["source"][0][index_t[b], p]
    outs = {id(r.data["source"][0]): r.data["source"][0] for r in rows}
    first = next(iter(outs.values()))
    gathered = first.new_empty(b.shape[0], first.shape[-1])
    group_t = torch.tensor(group, device=b.device)[b]
    for key, g in sources.items():
        sel = group_t == g
        gathered[sel] = outs[key][index_t[b[sel]], p[sel]]
    return gathered



def uniforms(rows: Sequence[Row], T: int, device, lengths: Sequence[int]) -> torch.Tensor:
    """(B, T) in the default dtype: row b's ``torch.rand(T_b)`` from its own generator, padded with
    1 (never below a probability)."""
    u = torch.ones(len(rows), T, device=device)
    for r, n, u_b in zip(rows, lengths, u.unbind(0)):  # (one unbind: no slicing for a full-length row)
        torch.rand(n, generator=r.gen, device=device, out=u_b if n == T else u_b[:n])
    return u


def categorical(log_p: torch.Tensor, counts: Sequence[int], gens: Sequence[torch.Generator | None]) -> torch.Tensor:
    """(N,) one draw from each of the (N, V) log-probabilities, whose rows come in consecutive
    blocks, ``counts[i]`` rows drawn with ``gens[i]``: block i's draws are
    ``sample_categorical(log_p[block i], gens[i])`` exactly (float64, as it draws)."""
    probs = log_p.double().exp()
    if not bool(torch.isfinite(probs.sum())):  # (a row of no mass is a row of NaN: log_softmax of all -inf)
        raise RuntimeError("probability tensor contains either inf or nan")
    q = torch.empty_like(probs)
    start = 0
    for n, g in zip(counts, gens):
        if n:
            q[start : start + n].exponential_(1, generator=g)
            start += n
    return (probs / q).argmax(-1)


def by_options(rows: Sequence[Row], counts: Sequence[int], values: torch.Tensor, fn):
    """``fn(sampler, values[rows of those options])`` once for each set of options among the rows
    (their sampler's class, banned ids, temperature, top-k and top-p), reassembled in row order:
    ``values`` (N, ...) come in consecutive blocks, ``counts[i]`` of them row i's. ``fn`` returns a
    tensor or a tuple of tensors, each (n, ...) for its n values."""
    samplers: dict[int, list] = {}  # (rows of one request share their sampler: its key is made once)
    start = 0
    for r, n in zip(rows, counts):
        samplers.setdefault(id(r.sampler), [r.sampler]).append((start, n))
        start += n
    if len(samplers) == 1:
        return fn(rows[0].sampler, values)
    groups: dict[tuple, tuple] = {}
    for smp, *spans in samplers.values():
        key = (type(smp), tuple(smp.banned_ids), smp.temperature, smp.top_k, smp.top_p)
        idx = groups.setdefault(key, (smp, []))[1]
        for lo, n in spans:
            idx.extend(range(lo, lo + n))
    if len(groups) == 1:
        ((smp, _),) = groups.values()
        return fn(smp, values)
    outs = None
    for smp, idx in groups.values():
        index = torch.tensor(idx, dtype=torch.long, device=values.device)
        part = fn(smp, values[index])
        part = part if isinstance(part, tuple) else (part,)
        if outs is None:
            outs = tuple(p.new_empty((values.shape[0], *p.shape[1:])) for p in part)
        for out, p in zip(outs, part):
            out[index] = p
    return outs if len(outs) > 1 else outs[0]


CHUNK = 1 << 20  # elements of a (positions, V) piece: float64 pieces of 8 MB stay in reused memory


def chunks(counts: Sequence[int], vocab: int, size: int = CHUNK):
    """(lo, hi, first, last): consecutive rows ``first:last`` whose ``counts`` positions, entries
    ``lo:hi`` of the row-major list, hold about ``size`` // ``vocab`` positions (one row at least).
    A (B * T, V) intermediate of a whole batch is hundreds of MB: each one freshly mapped and
    page-faulted in cost more than the arithmetic."""
    per = max(1, size // max(vocab, 1))
    lo = first = n = 0
    for b, c in enumerate(counts):
        n += c
        if n >= per:
            yield lo, lo + n, first, b + 1
            lo, first, n = lo + n, b + 1, 0
    if first < len(counts):
        yield lo, lo + n, first, len(counts)
