"""Blind spots of the batching, serving and limits tests, each with a known answer:

* rows of one family but other options (top-k, top-p, temperature, the family's own transition)
  joined in one ``State`` and stepped by the first row's sampler, as the server steps a group,
  must each give what they give alone;
* a guided request (its own wrapped network) and a plain one served at once must each get what
  they get alone (they must not share a network call);
* the sampling memory estimate must agree with the bytes a real sampling call allocates, and
  with the logits it must hold; the training estimate counts the parameters of the real module;
* a masked model's stream commits only decided tokens: the ids committed at every report hold no
  mask id and are a prefix of the final answer; and whether a decided token may still change
  (what the server streams on) is what each process and sampler claims.
"""

from __future__ import annotations

import re

import pytest
import torch
from golden.cases import float64 as _float64
from markov import tokenizer

from textdiffusion.config import Config, ModelConfig, ProcessConfig
from textdiffusion.runs import build_model
from textdiffusion.sampling import build_sampler
from textdiffusion.sampling.base import prompt_canvas


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread for this file's tiny models: two threads on two busy cores spin against
    each other (a forward took 50x longer); every comparison here runs both sides under it. Per
    test, so session fixtures (``cycle_dir``) are built as for every other file."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# 1. joined rows keep their own options ----------------------------------------------------------


def _random_model(process: str, sharpen: float = 2.0):
    """A random float64 model (its logits scaled by ``sharpen``: far from uniform, but not so far
    that top-k / top-p / temperature change nothing)."""
    cfg = Config(model=ModelConfig(n_layer=2, n_head=2, d_model=32, context=32),
                 process=ProcessConfig(name=process, block_size=4))
    cfg.model.vocab_size = tokenizer().vocab_size
    torch.manual_seed(0)
    with _float64():
        model, proc = build_model(cfg, tokenizer())
    with torch.no_grad():
        head = model.net.head if hasattr(model, "net") else model.head
        head.weight.mul_(sharpen)
    return model.eval(), proc


FILTERS = [{"top_k": 1}, {"top_p": 0.3}, {"temperature": 0.4}]
# (process, the first row's sampler and options, the joined rows' samplers and options): every
# family whose rows may join a batch, the joined rows differing from the first in one option each
# (speculative rows of other settings: tests/test_speculative.py)
JOINED = [
    ("masked", ("ancestral", {}), [("ancestral", f) for f in FILTERS] + [("remdm", {"eta": 0.6})]),
    ("uniform", ("ancestral", {}), [("ancestral", f) for f in FILTERS]),
    ("masked", ("confidence", {}), [("confidence", f) for f in FILTERS]
     + [("margin", {}), ("entropy", {}), ("random", {}), ("confidence", {"schedule": "cosine"})]),
    ("masked", ("semi-ar", {"block_length": 4}), [("semi-ar", {"block_length": 4, **f}) for f in FILTERS]
     + [("semi-ar", {"block_length": 4, "order": "random"})]),
    ("masked", ("threshold", {"block_length": 4, "threshold": 0.95}),
     [("threshold", {"block_length": 4, "threshold": 0.95, **f}) for f in FILTERS]
     + [("threshold", {"block_length": 4, "threshold": 0.05})]),
    ("block", ("block", {}), [("block", f) for f in FILTERS]
     + [("block", {"order": "confidence"}), ("block", {"order": "confidence", "threshold": 0.05})]),
    ("ar", ("ar", {}), [("ar", f) for f in FILTERS]),
    # (the rounding draw at the end is peaked: the first row samples it at a high temperature)
    ("gaussian", ("ddpm", {"temperature": 4.0}), [("ddpm", {"temperature": 4.0, **f}) for f in FILTERS]
     + [("ddim", {"temperature": 4.0})]),
]
PROMPT, FREE, STEPS, SEEDS = [0, 1, 2], 12, 6, (31, 32)


def _start(smp, model, proc, seed: int):
    canvas = prompt_canvas(torch.tensor(PROMPT), 1, FREE, "cpu")
    return smp.start(model, proc, canvas, STEPS, [torch.Generator().manual_seed(seed)])


def _alone(smp, model, proc, seed: int) -> torch.Tensor:
    state = _start(smp, model, proc, seed)
    while not state.finished:
        smp.step(state, model)
    return state.rows[0].tokens


def _differ(want: dict, i: int, other: dict) -> bool:
    """Row options ``i`` give other tokens than ``other`` (seed -> tokens) under one of the seeds."""
    return any(not torch.equal(want[i, s], other[s]) for s in SEEDS)


@pytest.mark.parametrize("process, first, others", JOINED,
                         ids=[f"{p}-{f[0]}" for p, f, _ in JOINED])
def test_joined_rows_are_stepped_with_their_own_options(process, first, others):
    """A row of one family with other options (top-k, top-p, temperature, or the family's own:
    ReMDM's re-masking transition, another remasking order or schedule, a threshold, block
    diffusion's confidence order, DDIM's deterministic steps), started on its own, joined
    (``State.join``: at once, or after a step) into the state of a row of the family's first
    options and stepped by that first row's sampler (what the server's scheduler does for a
    group), gives exactly the tokens it gives alone under the same generator (the first row too).
    Each joined option is checked to change the tokens (alone, against the first row's options
    and against the row it adds an option to, at least one of two seeds differs), so a row
    stepped with another row's options cannot pass.
    Catches: a family's ``step`` reading ``self.top_k`` / ``self.top_p`` / ``self.temperature`` /
    its transition from ``self`` (the first row's sampler) instead of each row's ``r.sampler``
    (planted: ``smp = self`` in ancestral.py, remasking.py, blocks.py, autoregressive.py,
    continuous.py, and single options read from ``self``; each seen failing)."""
    model, proc = _random_model(process)
    tok = tokenizer()
    lead = build_sampler(first[0], proc, tok, **first[1])
    smps = [build_sampler(name, proc, tok, **opts) for name, opts in others]
    with _float64(), torch.no_grad():
        want = {(i, s): _alone(smp, model, proc, s) for i, smp in enumerate(smps) for s in SEEDS}
        lead_alone = {s: _alone(lead, model, proc, s) for s in SEEDS}
        for i, (name, opts) in enumerate(others):  # the option matters: the check below can fail
            assert _differ(want, i, lead_alone), f"{name} {opts} gives the first row's tokens: pick another option"
            for j, (other, fewer) in enumerate(others):  # ... and so does each option added to another row's
                if other == name and fewer.items() < opts.items():
                    assert _differ(want, i, {s: want[j, s] for s in SEEDS}), f"{name} {opts} gives {fewer}'s tokens"
        state = _start(lead, model, proc, 30)
        first_row, rows = state.rows[0], {}
        for s in SEEDS:  # the first seed's rows join at once, the second's after a step (in flight)
            for i, smp in enumerate(smps):
                late = _start(smp, model, proc, s)
                rows[i, s] = late.rows[0]
                state.join(late)
            lead.step(state, model)
        while not state.finished:
            lead.step(state, model)
        first_alone = _alone(lead, model, proc, 30)
    assert torch.equal(first_row.tokens, first_alone), "the first row's tokens changed when others joined"
    for (i, s), row in rows.items():
        assert torch.equal(row.tokens, want[i, s]), \
            f"{others[i][0]} {others[i][1]} (seed {s}) joined a {first[0]} batch and gave other tokens than alone"


# 2. a guided request gets its own network call --------------------------------------------------


def _serve(run, tasks: list, watch: bool = False, commits: list | None = None) -> list:
    """Submit every task to one ``Scheduler`` (all pending before the first step, so they are
    admitted together) and drive it in this thread until all are answered: each task's result.
    ``commits``: per task, the function its committed ids go through (``Job.commit``)."""
    from textdiffusion.serve.scheduler import Job, Scheduler

    sched = Scheduler(run, max_batch=64)
    sched.bind_here()
    answers: list = [None] * len(tasks)

    def notify(i):
        def hear(kind, payload):
            if kind in ("done", "error"):
                answers[i] = payload[0] if kind == "done" else payload
        return hear

    jobs = [sched.submit(Job(task, notify(i), watch=watch, commit=None if commits is None else commits[i]))
            for i, task in enumerate(tasks)]
    sched.drive(until=lambda: all(j.finished for j in jobs))
    for a in answers:
        assert a is not None and not isinstance(a, BaseException), a
    return answers


def _prompt_dropping(run):
    """``run`` as a run instruction-tuned with prompt dropping claims to be (the same network,
    process and tokenizer): the server then builds a guided request's wrapper itself
    (``guided_model``: classifier-free guidance on the prompt)."""
    import copy

    from textdiffusion.runs.loaded import LoadedRun

    cfg = copy.deepcopy(run.cfg)
    cfg.data.sft, cfg.train.prompt_drop = True, 0.1
    return LoadedRun(run.run_dir, cfg, run.tokenizer, run.model, run.process, run.weights)


def _request(pipe, body: dict, commit: bool = False):
    """The task the server builds for a /v1/completions ``body`` (serve/tasks.py ``build_task``),
    and (``commit``) the function its committed ids become text by."""
    from textdiffusion.serve.requests import parse
    from textdiffusion.serve.tasks import build_task

    task, text_of, _ = build_task(pipe, parse(body, "completions", context=pipe.run.cfg.model.context, max_steps=1000))
    return (task, text_of) if commit else task


def test_a_guided_request_never_shares_a_plain_requests_network_call(cycle_dir):
    """Requests with classifier-free guidance (``"guidance": 4``: the server wraps the network,
    control/guidance.py) and plain requests of the same sampler, prompt, length and seeds,
    submitted together to the server's ``Scheduler`` (a guided one first, and a plain one first):
    each gets exactly the text it gets alone. Alone, every guided text differs from the plain
    text of its seed (checked), so a guided request stepped with the plain network (or the
    reverse) gets the other's text.
    Catches: the scheduler grouping rows by sampler family only (planted: ``(state.family,)``
    instead of ``(state.family, id(plan.model))`` in serve/batch.py ``group_key``: a guided
    request's rows stepped with a plain request's network, or the reverse)."""
    from textdiffusion import Pipeline
    from textdiffusion.runs import load_run

    run = _prompt_dropping(load_run(cycle_dir))
    pipe = Pipeline(run)
    seeds = (5, 6, 7)
    for sampler in ("ancestral", "confidence"):
        bodies = [{"prompt": "abc", "max_tokens": 12, "steps": 6, "sampler": sampler, "seed": s, "guidance": g}
                  for s in seeds for g in (0.0, 4.0)]  # plain, guided, plain, guided, ...
        alone = [_request(pipe, b).run().texts for b in bodies]
        for k in range(0, len(bodies), 2):
            assert alone[k] != alone[k + 1], f"{sampler}: guidance changes nothing here: the check could not fail"
        for order in (1, -1):  # a plain request first, a guided one first
            got = [r.texts for r in _serve(run, [_request(pipe, b) for b in bodies[::order]])][::order]
            assert got == alone, f"{sampler}: served together {got}, alone {alone}"


# 3. the sampling memory estimate ----------------------------------------------------------------

UNITS = {"bytes": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "PB": 1e15}


def _estimate_per_token(model, length: int) -> float:
    """Bytes per token that ``check_sampling_memory`` estimates, read from its refusal of 10^12
    rows (no machine has the petabytes: the refusal, which prints the estimate, is certain; in
    petabytes, the largest unit, it prints 5 or more significant digits)."""
    from textdiffusion.errors import UsageError
    from textdiffusion.limits.memory import check_sampling_memory

    rows = 10**12
    with pytest.raises(UsageError, match="need about") as refused:
        check_sampling_memory(model, rows, length)
    found = re.search(r"need about ([\d.]+) (\w+) of memory", str(refused.value))
    return float(found.group(1)) * UNITS[found.group(2)] / (rows * length)


def _peak_bytes(fn) -> int:
    """The most bytes torch held at once, beyond what it held before, while ``fn()`` ran: every
    allocation and free the profiler records (sizes, not times: the same on any CPU and load)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    moves = []

    def walk(events):
        for e in events:
            if e.tag == _EventType.Allocation:
                moves.append((e.start_time_ns, e.extra_fields.alloc_size))  # a free is negative
            walk(e.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    held = peak = 0
    for _, size in sorted(moves, key=lambda m: m[0]):
        held += size
        peak = max(peak, held)
    return peak


def test_the_sampling_memory_estimate_matches_what_sampling_allocates():
    """``check_sampling_memory`` estimates a request's activations: "the widest layer and the
    logits with their softmax" (limits/memory.py), erring high by at most a small factor. On a real
    model with a 4,004-token vocabulary (where the logits dominate), the estimate for 4 rows of
    64 tokens must (a) hold the logits a real network call returns (their exact bytes, B*T*V*4)
    and at most 5 times them (the logits, their softmax and the sampler's probabilities are 3
    copies), and (b) lie within a factor 3 of the peak bytes a real sampling call allocates
    (measured with torch.profiler for the ancestral and the confidence sampler; about 0.7-0.9 of
    the estimate). Sizes only, no timing.
    Catches: the estimate off by 10x either way (planted: ``need = 10 * rows * length * ...`` and
    ``need = rows * length * ... / 10`` in limits/memory.py ``check_sampling_memory``)."""
    from textdiffusion.tokenizers import CharTokenizer

    tok = CharTokenizer([chr(0x4E00 + i) for i in range(4000)])
    cfg = Config(model=ModelConfig(n_layer=2, n_head=2, d_model=32, context=64), process=ProcessConfig(name="masked"))
    cfg.model.vocab_size = tok.vocab_size
    torch.manual_seed(0)
    model, proc = build_model(cfg, tok)
    model.eval()
    B, T = 4, 64
    estimate = _estimate_per_token(model, T) * B * T
    with torch.no_grad():
        logits = model(torch.zeros(B, T, dtype=torch.long), torch.full((B,), 0.5))
    assert logits.shape == (B, T, tok.vocab_size)
    exact = logits.numel() * logits.element_size()  # the logits tensor of one call over the request
    assert exact <= estimate <= 5 * exact, (estimate, exact)
    for name in ("ancestral", "confidence"):
        smp = build_sampler(name, proc, tok)
        peak = _peak_bytes(lambda smp=smp: smp.generate(model, proc, length=T, steps=2, batch_size=B,
                                                        gen=torch.Generator().manual_seed(0)))
        assert peak >= exact, (name, peak, exact)  # the measurement sees the logits
        assert estimate / 3 <= peak <= 3 * estimate, (name, peak, estimate)



# (process, model settings): our models and the variants the public-checkpoint adapters set
VARIANTS = [
    ("masked", {}), ("masked", {"time_cond": True}), ("masked", {"num_labels": 3, "mlp_ratio": 2}),
    ("ar", {"tie_embeddings": True}), ("uniform", {"time_cond": True, "num_labels": 2}),
    ("sedd-absorb", {"time_cond": True, "cond_dim": 16, "ada_norm_weight": True, "norm_bias": False,
                     "mlp_bias": True, "final_ada": True, "head_bias": True}),
    ("masked", {"norm": "rms", "mlp": "swiglu", "mlp_hidden": 40, "n_kv_head": 1, "qkv_bias": True}),
    ("ar", {"positions": "learned", "proj_bias": True, "tie_embeddings": True}),
    ("gaussian", {"time_cond": True}), ("gaussian-sc", {"time_cond": True}),
]


@pytest.mark.parametrize("process, settings", VARIANTS, ids=[f"{p}-{'-'.join(s) or 'plain'}" for p, s in VARIANTS])
def test_the_training_memory_counts_the_parameters_of_the_real_module(process, settings):
    """The parameters behind the training-memory estimate (``limits.memory.training_memory``) equal the
    parameters of the network ``build_model`` makes, for our models and the public models'
    variants (RMSNorm, SwiGLU, grouped-query attention, learned positions, tied embeddings, the
    DiT variants, labels, the Gaussian embedding denoiser with self-conditioning).
    Catches a count that drifts from the module (planted: the hand-written layout formula it
    replaced, which counted a label table for unlabelled models and missed the adaLN variants:
    off on 9 of the 10)."""
    from textdiffusion.limits.memory import training_memory

    name = "gaussian" if process == "gaussian-sc" else process
    cfg = Config(model=ModelConfig(n_layer=2, n_head=2, d_model=32, context=32, **settings),
                 process=ProcessConfig(name=name, **({"self_cond": True} if process == "gaussian-sc" else {})))
    cfg.model.vocab_size = tokenizer().vocab_size
    model, _ = build_model(cfg, tokenizer())
    real = sum(p.numel() for p in model.parameters())
    assert training_memory(cfg, tokenizer().vocab_size)["_params"] == real

# 4. a stream commits decided tokens only ----------------------------------------------------------


def test_a_masked_models_stream_commits_no_masked_position(cycle_dir):
    """Streamed /v1/completions requests of the masked cycle model (ancestral, confidence,
    semi-ar and threshold, with and without a prompt), served together by the ``Scheduler``
    with ``watch`` on: the token ids committed at every report (what ``Job.commit`` is given,
    read as ids, since decoding to text drops mask ids) hold no mask id, never shrink, and are
    a prefix of the final answer's generated ids; and the stream committed something before the
    end (a report with an unfinished, growing prefix), so there was a masked position to miss.
    Catches: the committed prefix counting a position that still holds the mask id (planted:
    ``if t < 0:`` instead of ``if t < 0 or t == self.mask_id:`` in serve/reporter.py
    ``Reporter.committed``)."""
    from textdiffusion import Pipeline

    pipe = Pipeline.from_pretrained(cycle_dir)
    mask_id = pipe.run.process.mask_id
    bodies = [{"prompt": prompt, "max_tokens": 12, "steps": 6, "sampler": sampler, "seed": seed, "stream": True,
               **({"block_length": 4} if sampler in ("semi-ar", "threshold") else {})}
              for sampler in ("ancestral", "confidence", "semi-ar", "threshold")
              for prompt, seed in (("abc", 1), ("", 2))]
    made = [_request(pipe, b, commit=True) for b in bodies]
    seen: list[list[list[int]]] = [[] for _ in bodies]

    def recorder(i, text_of):
        def commit(ids):
            seen[i].append(list(ids))
            return text_of(ids)
        return commit

    results = _serve(pipe.run, [task for task, _ in made], watch=True,
                     commits=[recorder(i, text_of) for i, (_, text_of) in enumerate(made)])
    early = 0
    for body, result, commits in zip(bodies, results, seen):
        gen = result.generation
        final = gen.tokens[0, gen.prompt_length :].tolist()
        assert mask_id not in final and commits, body
        for before, ids in zip([[]] + commits, commits):
            assert mask_id not in ids, f"{body}: committed a masked position: {ids}"
            assert ids == final[: len(ids)], f"{body}: committed {ids}, not a prefix of the answer {final}"
            assert len(ids) >= len(before), f"{body}: the committed prefix shrank"
        early += any(len(ids) < len(final) for ids in commits)
    assert early, "no stream committed anything before its end: the check above saw no masked position"


# (process, sampler, options): whether a decided token may still change is a claim of the process
# (``keeps_decided``) and the sampler (``remasks``); the server streams on it (serve/reporter.py)
DECIDED = [("masked", "ancestral", {}), ("masked", "confidence", {}), ("masked", "remdm", {"eta": 0.9}),
           ("block", "block", {}), ("sedd-absorb", "ancestral", {}), ("ar", "ar", {}),
           ("uniform", "ancestral", {}), ("sedd-uniform", "ancestral", {}), ("gaussian", "ddpm", {})]


@pytest.mark.parametrize("process,sampler,options", DECIDED, ids=[f"{p}-{s}" for p, s, _ in DECIDED])
def test_what_a_process_and_sampler_claim_about_decided_tokens_holds(process, sampler, options):
    """Generate 12 tokens in 8 steps from a random model, 4 rows, keeping every step's canvas: a
    pair whose ``process.keeps_decided and not sampler.remasks`` is true never changes a decided
    token (neither a mask id nor negative) at a later step; a pair whose claim is false does, at
    some step (so the server, which streams decided tokens early only when the claim holds, would
    have streamed a token that later changed). Catches a wrong capability: planted, ReMDM without
    ``remasks = True`` (its tokens are re-masked) and the uniform process with ``keeps_decided =
    True`` (its tokens are replaced)."""
    model, proc = _random_model(process, sharpen=1.0)
    s = build_sampler(sampler, proc, tokenizer(), **options)
    with _float64():  # (the Gaussian prior in the model's dtype)
        gen = s.generate(model, proc, length=12, steps=8, batch_size=4, gen=torch.Generator().manual_seed(0),
                         trace=True)
    undecided = {-1, proc.mask_id}
    changed = 0
    for before, after in zip(gen.trace, gen.trace[1:]):
        decided = torch.tensor([[t not in undecided for t in row] for row in before.tolist()])
        changed += int((decided & (before != after[:, : before.shape[1]])).sum())  # (the AR twin's canvas grows)
    claim = proc.keeps_decided and not s.remasks
    assert len(gen.trace) >= 4, f"{len(gen.trace)} steps recorded: too few to see a change"
    if claim:
        assert changed == 0, f"{process}/{sampler} claims decided tokens are final, but {changed} changed later"
    else:
        assert changed > 0, f"{process}/{sampler} claims decided tokens may change, but none did in {len(gen.trace)} steps"
