"""bench/sampler_overhead.py, the benchmark of a sampler's own cost beside the network: its exact
network is the true posterior of its product law, and it counts row-steps, not steps."""

import importlib.util
import json
import sys
from pathlib import Path

import torch

from textdiffusion.tokenizers import CharTokenizer

REPO = Path(__file__).resolve().parent.parent


def _bench():
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location("sampler_overhead", REPO / "bench" / "sampler_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_exact_network_is_the_posterior_of_its_product_law():
    """At a masked position the network gives the position's own marginal q_i (whatever the
    other positions hold: they are independent), at an unmasked one certainty of its token, and
    never a banned id. Catches: the marginals read at the wrong position (planted: ``log_q[0]``
    for every position) or an unmasked position given q_i."""
    bench = _bench()
    tok = CharTokenizer(list("abcdef"))
    net = bench.ProductDenoiser(5, tok)
    m = tok.mask_id
    x = torch.tensor([[m, 2, m, 4, m], [1, m, m, m, 0]])
    p = net(x).softmax(-1)
    for b in range(2):
        for i in range(5):
            if x[b, i] == m:
                assert torch.allclose(p[b, i], net.log_q[i].exp(), atol=1e-6), (b, i)
            else:
                assert float(p[b, i, x[b, i]]) > 1 - 1e-6, (b, i)
    assert float(p[..., list(tok.banned_ids)].max()) < 1e-9
    assert not torch.allclose(net.log_q[0], net.log_q[1])  # the positions differ: a misread would show


def test_the_benchmark_counts_row_steps(tmp_path):
    """``--smoke`` runs end to end and writes its JSON; a remasking or semi-ar row takes every
    one of its steps, so their row-steps are exactly batch x steps (4 steps, batches 1 and 8).
    Catches counting network calls or steps instead of unfinished rows per step."""
    bench = _bench()
    assert bench.main(["--smoke", "--no-english", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "before.json").read_text())["rows"]
    counted = {(r["sampler"], r["batch"]): r["row_steps"] for r in rows}
    for name in ("confidence", "semi-ar"):
        assert counted[(name, 1)] == 4 and counted[(name, 8)] == 32, counted
