"""Guidance with a known label set: documents labelled "a" are rich in the letter a, those
labelled "b" in b. A briefly trained class-conditional model must follow its label, and the
label's letter must grow more frequent in samples as the guidance scale w grows, for a discrete
(masked) and the Gaussian process; the same for classifier guidance of the unconditional model
(the "no label" half of the same runs) by a classifier of its noisy inputs. Also: the wrappers'
arithmetic, and clear errors."""

import json
import random

import pytest
import torch

from textdiffusion.config import load_config
from textdiffusion.control import Conditioned, guided_model
from textdiffusion.control.guidance import drop_condition
from textdiffusion.runs import load_run
from textdiffusion.runs.checkpoint import CheckpointError
from textdiffusion.sampling import build_sampler
from textdiffusion.training.classifier import classify, load_classifier, train_classifier
from textdiffusion.training.recipe import train_run

LETTERS = "abcd"
LENGTH = 16


def _doc(rng, label):
    # the label's letter with probability 0.4, the other three letters share the rest
    return "".join(label if rng.random() < 0.4 else rng.choice([c for c in LETTERS if c != label])
                   for _ in range(LENGTH))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    rng = random.Random(0)
    d = tmp_path_factory.mktemp("labelled")
    f = d / "docs.jsonl"
    f.write_text("".join(json.dumps({"text": _doc(rng, lab), "label": lab}) + "\n"
                         for lab in ("a", "b") * 1500))
    runs = {}
    for process, steps in (("masked", 300), ("gaussian", 500)):
        cfg = load_config(None, [f"data.path={f}", "data.labels=true", f"process.name={process}", "model.n_layer=2",
                                 "model.n_head=2", "model.d_model=64", f"model.context={LENGTH + 1}",
                                 f"train.max_steps={steps}", "train.batch_size=64", "train.lr=3e-3",
                                 "train.warmup_steps=20", "train.ema=0", f"train.eval_every={steps}",
                                 f"train.ckpt_every={steps}", "train.cond_drop=0.2"])
        train_run(cfg, d / process, progress=False)
        runs[process] = load_run(d / process)
    runs["data"] = f
    return runs


def _frequency(run, label, w, letter, sampler, classifier=None):
    model = guided_model(run, label, w, classifier=classifier)
    smp = build_sampler(sampler, run.process, run.tokenizer)
    out = smp.generate(model, run.process, length=LENGTH, steps=LENGTH, batch_size=64,
                       gen=torch.Generator().manual_seed(0))
    text = "".join(run.tokenizer.decode(row) for row in out.tokens.tolist())
    return text.count(letter) / max(len(text), 1)


@pytest.mark.parametrize("process, sampler", [("masked", "ancestral"), ("gaussian", "ddpm")])
def test_guidance_moves_samples_toward_the_label(labelled, process, sampler):
    run = labelled[process]
    assert run.labels == ["a", "b"] and run.cfg.model.num_labels == 2
    freq = {w: _frequency(run, "a", w, "a", sampler) for w in (0.0, 1.0, 3.0)}
    other = _frequency(run, "b", 0.0, "a", sampler)
    assert freq[0.0] > other + 0.1, (freq, other)  # the label conditions the samples
    assert freq[3.0] > freq[1.0] > freq[0.0], freq  # and guidance pushes them further toward it
    assert freq[3.0] > 0.5, freq


def test_guidance_arithmetic_and_errors(labelled):
    run = labelled["masked"]
    x = torch.full((2, LENGTH), run.process.mask_id)
    l_c = run.model(x, labels=torch.tensor([0, 0]))
    l_u = run.model(x)  # no label
    guided = Conditioned(run.model, torch.tensor([0]), scale=2.0)(x)
    assert torch.allclose(guided, l_c + 2.0 * (l_c - l_u), atol=1e-5)
    assert torch.allclose(Conditioned(run.model, torch.tensor([0]))(x), l_c)
    # prompt guidance: the unconditional pass sees the prompt positions as pad tokens
    prompt = torch.zeros(2, LENGTH, dtype=torch.bool)
    prompt[:, 1:4] = True
    x = torch.randint(0, 4, (2, LENGTH))
    x_u = torch.where(prompt, torch.full_like(x, run.tokenizer.pad_id), x)
    guided = Conditioned(run.model, None, 1.5, prompt, run.tokenizer.pad_id)(x)
    assert torch.allclose(guided, run.model(x) + 1.5 * (run.model(x) - run.model(x_u)), atol=1e-5)
    with pytest.raises(ValueError, match="unknown label"):
        guided_model(run, "z", 1.0)
    with pytest.raises(ValueError, match="needs --label"):
        guided_model(run, None, 1.0)
    with pytest.raises(ValueError, match="KV cache"):
        Conditioned(run.model, torch.tensor([0]), 1.0)(x, kv_cache=object())


def test_condition_dropout():
    gen = torch.Generator().manual_seed(0)
    batch = torch.arange(1000 * 5).view(1000, 5)
    fixed = torch.zeros(1000, 5, dtype=torch.bool)
    fixed[:, :3] = True
    out, _ = drop_condition(batch, fixed, None, 0.3, gen, pad_id=-7, null=0)
    dropped = (out == -7).any(1)
    assert abs(dropped.float().mean().item() - 0.3) < 0.05
    assert (out[:, 0] == batch[:, 0]).all() and (out[:, 3:] == batch[:, 3:]).all()  # only the prompt after <eot>
    assert (out[dropped, 1:3] == -7).all()
    _, labels = drop_condition(batch, fixed, torch.ones(1000, dtype=torch.long), 0.3, gen, pad_id=-7, null=2)
    assert abs((labels == 2).float().mean().item() - 0.3) < 0.05 and set(labels.tolist()) == {1, 2}


@pytest.fixture(scope="module")
def classifiers(labelled, tmp_path_factory):
    out = {}
    for process in ("masked", "gaussian"):
        d = tmp_path_factory.mktemp(f"clf-{process}")
        info = train_classifier(labelled[process].run_dir, str(labelled["data"]), d / "clf", steps=150, batch_size=64,
                                lr=2e-3, layers=1, progress=False)
        out[process] = (info, load_classifier(d / "clf"))
    return out


@pytest.mark.parametrize("process, sampler", [("masked", "ancestral"), ("gaussian", "ddpm")])
def test_classifier_guidance_moves_unconditional_samples_toward_the_label(labelled, classifiers, process, sampler):
    run = labelled[process]
    info, clf = classifiers[process]
    # the Bayes classifier (sign of #a - #b) is right about 85 % of the time on 16-letter documents
    assert info["val_accuracy_at_t"]["0.0"] > 0.75 and info["labels"] == ["a", "b"]
    assert info["val_accuracy_at_t"]["0.0"] >= info["val_accuracy_at_t"]["0.75"]  # noisier inputs are harder
    freq = {w: _frequency(run, "a", w, "a", sampler, clf) for w in (0.0, 2.0, 6.0)}
    away = _frequency(run, "b", 6.0, "a", sampler, clf)
    assert freq[6.0] > freq[2.0] > freq[0.0], freq  # w = 0: the unconditional model (about 0.3 a's)
    assert freq[6.0] > freq[0.0] + 0.1 and away < freq[0.0] - 0.05, (freq, away)
    probs = classify(run, clf, ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"])
    assert probs[0, 0] > 0.9 and probs[1, 1] > 0.9


def test_classifier_guidance_errors(labelled, classifiers, tmp_path):
    _, clf = classifiers["masked"]
    with pytest.raises(ValueError, match="needs --label"):
        guided_model(labelled["masked"], None, 2.0, classifier=clf)
    with pytest.raises(ValueError, match="another tokenizer or process"):
        guided_model(labelled["gaussian"], "a", 2.0, classifier=clf)
    with pytest.raises(CheckpointError, match="not a classifier"):
        load_classifier(tmp_path)
    (tmp_path / "classifier.json").write_text("{")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_classifier(tmp_path)


def test_label_windows_pack_each_label_separately():
    from textdiffusion.data import Document, label_windows
    from textdiffusion.tokenizers import CharTokenizer

    tok = CharTokenizer(list("abcdxy"))
    docs = [Document("1", "ab", "p"), Document("2", "xy", "q"), Document("3", "cd", "p")]
    rows = label_windows(docs, ["p", "q"], tok, 3)
    e = tok.eot_id
    text = [[e, *tok.encode("ab").tolist(), e], [e, *tok.encode("cd").tolist(), e], [e, *tok.encode("xy").tolist(), e]]
    assert rows.tokens.tolist() == text and rows.labels.tolist() == [0, 0, 1]
    assert rows.fixed[:, 0].all() and not rows.fixed[:, 1:].any()


def test_a_guided_prompt_of_several_rows_is_sampled_with_the_cached_default(cycle_dir):
    """Prompt guidance with num=3 and the ancestral sampler (the masked default): its cache
    re-runs only the rows that changed, and the guided wrapper's null positions were (3, T)
    against a smaller batch: a shape error (a 500 from the server). Known answer: the first row of
    num=3 is num=1's text (each row has its own generator), and guidance changed the texts."""
    import copy

    from textdiffusion.control.continuation import continue_prompt
    from textdiffusion.runs import load_run
    from textdiffusion.runs.loaded import LoadedRun

    run = load_run(cycle_dir)
    cfg = copy.deepcopy(run.cfg)
    cfg.data.sft, cfg.train.prompt_drop = True, 0.1  # as a run tuned with prompt dropping claims
    run = LoadedRun(run.run_dir, cfg, run.tokenizer, run.model, run.process, run.weights)
    kw = dict(length=12, steps=12, sampler="ancestral", seed=3)
    _, three, _ = continue_prompt(run, "abc", num=3, guidance=4.0, **kw)
    _, one, _ = continue_prompt(run, "abc", num=1, guidance=4.0, **kw)
    _, plain, _ = continue_prompt(run, "abc", num=3, **kw)
    assert three[0] == one[0] and three != plain
