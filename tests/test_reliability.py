"""Reliability (RELIABILITY.md): damaged runs, full disks, sizes checked before they are
allocated, Ctrl-C at any moment. Each test names the defect it reproduces; each failed on the
code before its fix."""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from markov import MarkovChain, tokenizer

from textdiffusion.config import Config, DataConfig, ModelConfig, TrainConfig
from textdiffusion.errors import CheckpointError, TextDiffusionError, TokenizerError, UsageError
from textdiffusion.runs.checkpoint import checkpoint_dir
from textdiffusion.training.trainer import train

REPO = Path(__file__).resolve().parent.parent
EXE = Path(sys.executable).parent / "textdiffusion"


def _cfg(d_model=32, **train) -> Config:
    return Config(model=ModelConfig(n_layer=1, n_head=2, d_model=d_model, context=16),
                  train=TrainConfig(**{"batch_size": 4, "max_steps": 4, "eval_every": 4, "eval_batches": 1,
                                       "ckpt_every": 2, "log_every": 1, "ema": 0.9, **train}))


@pytest.fixture(scope="module")
def splits():
    mc = MarkovChain()
    return {"train": mc.sample(4_000, seed=1), "val": mc.sample(1_000, seed=2)}


@pytest.fixture(scope="module")
def stopped(splits, tmp_path_factory):
    """A run stopped at step 2 of 4 (resumable), and another run of another size."""
    base = tmp_path_factory.mktemp("stopped")
    train(_cfg(), base / "run", splits, tokenizer(), progress=False, until=2)
    train(_cfg(d_model=16), base / "other", splits, tokenizer(), progress=False, until=2)
    return base


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _exported(run: Path) -> None:
    """The run replaced by its exported model (weights only), as `textdiffusion export` writes it."""
    from textdiffusion import Pipeline

    shutil.rmtree(run)
    Pipeline.from_pretrained(str(run.parent / "source")).save_pretrained(run)


@pytest.mark.parametrize("damage, needle", [
    (lambda run, other: _truncate(checkpoint_dir(run) / "optimizer.safetensors"), "corrupt checkpoint file .*optimizer"),
    (lambda run, other: (checkpoint_dir(run) / "rng.safetensors").write_text("not safetensors"),
     "corrupt checkpoint file .*rng.safetensors"),
    (lambda run, other: _truncate(checkpoint_dir(run) / "ema.safetensors"), "corrupt checkpoint file .*ema.safetensors"),
    (lambda run, other: (checkpoint_dir(run) / "state.json").write_text("{"), "corrupt checkpoint file .*state.json"),
    (lambda run, other: (checkpoint_dir(run) / "state.json").write_text("[]"), "state.json: expected a JSON object"),
    (lambda run, other: (checkpoint_dir(run) / "model.safetensors").unlink(), "has no model.safetensors"),
    (lambda run, other: shutil.copy(checkpoint_dir(other) / "optimizer.safetensors", checkpoint_dir(run)),
     "optimizer.safetensors does not fit this model .*another run"),
    (lambda run, other: _exported(run), "holds weights only .*cannot be resumed.*--init"),
], ids=["truncated-optimizer", "rng-not-safetensors", "truncated-ema", "state-not-json", "state-a-list",
        "weights-missing", "another-runs-optimizer", "an-exported-model"])
def test_resume_on_a_damaged_run_names_the_file_and_changes_nothing(stopped, splits, tmp_path, damage, needle):
    """--resume on a damaged run was a traceback: KeyError 'optimizer' for an exported model, a
    raw SafetensorError for a truncated optimizer/rng file, a JSON error naming no file, another
    run's optimizer a torch shape error steps later. Now a CheckpointError names the file and the
    fix, before anything is changed (the run's files are byte-identical afterwards)."""
    run = tmp_path / "run"
    shutil.copytree(stopped / "run", run)
    shutil.copytree(stopped / "run", tmp_path / "source")
    damage(run, stopped / "other")
    before = _files(run)
    with pytest.raises(CheckpointError, match=needle):
        train(_cfg(), run, splits, tokenizer(), progress=False, resume=True)
    assert _files(run) == before


def test_missing_weights_are_named_as_missing_not_corrupt(stopped, tmp_path):
    """A weights file that is not there was reported as "corrupt checkpoint ... No such file or
    directory"; now it says the checkpoint has no such file."""
    from textdiffusion.runs import load_run

    run = tmp_path / "run"
    shutil.copytree(stopped / "run", run)
    (checkpoint_dir(run) / "ema.safetensors").unlink()
    (checkpoint_dir(run) / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no model.safetensors") as info:
        load_run(run)
    assert "corrupt" not in str(info.value)


def _file_size_limit(limit: int):
    """A subprocess's files may grow to ``limit`` bytes; a write past it fails with EFBIG (what a
    full disk does with ENOSPC) instead of killing the process."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _cli(*args, limit: int | None = None, cache: Path | None = None, timeout: int = 120):
    env = {**os.environ, "TEXTDIFFUSION_CACHE": str(cache)} if cache else None
    cmd = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "textdiffusion"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env,
                          preexec_fn=_file_size_limit(limit) if limit else None)


def _one_line(r) -> str:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr.strip().splitlines()[-1]


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path):
    """A write that fails mid-checkpoint (here: a 64 KB file size limit, below the 100 KB weights
    file; a full disk fails the same write with ENOSPC) was a SafetensorError traceback; a full
    token cache said only "N requested and M written". Now each is one line naming the folder,
    the reason and the fix, and the half-written files are gone (the run had no checkpoint yet,
    so its folder goes too)."""
    corpus = tmp_path / "text.txt"
    corpus.write_text("the cat sat on the mat. " * 400)
    args = ("train", "--data", corpus, "--config", REPO / "configs" / "tiny.toml", "--set", "train.max_steps=2",
            "--quiet")
    line = _one_line(_cli(*args, "--out", tmp_path / "run", limit=64_000, cache=tmp_path / "cache"))
    assert "could not write a checkpoint into" in line and "File too large" in line and "train again" in line
    assert not (tmp_path / "run").exists()
    line = _one_line(_cli(*args, "--out", tmp_path / "run2", limit=6_000, cache=tmp_path / "cache2"))
    assert "could not write the token cache in" in line and "TEXTDIFFUSION_CACHE" in line
    assert "the disk is full, or a file size limit was reached" in line  # numpy's short write said only "N requested and M written"
    assert not any(p.name.startswith("") and ".tmp" in p.name for p in (tmp_path / "cache2").rglob("*"))


def test_a_failed_metrics_rewrite_keeps_the_history(tmp_path):
    """--resume rewrites metrics.jsonl without the records after its checkpoint. It did so in
    place: a kill or a full disk mid-write erased the history. Now the new file replaces the old
    one whole, or not at all (here the rewrite exceeds a 1 KB file size limit)."""
    metrics = tmp_path / "metrics.jsonl"
    history = "".join(json.dumps({"step": s, "loss": 1.0 / s, "note": "x" * 40}) + "\n" for s in range(1, 41))
    metrics.write_text(history)
    code = ("import sys; from pathlib import Path; from textdiffusion.training.trainer import _truncate_metrics\n"
            "_truncate_metrics(Path(sys.argv[1]), 30)")
    r = subprocess.run([sys.executable, "-c", code, str(metrics)], capture_output=True, text=True, timeout=120,
                       preexec_fn=_file_size_limit(1_000))
    assert r.returncode != 0 and "File too large" in r.stderr
    assert metrics.read_text() == history
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file left behind


def test_sizes_are_checked_before_anything_is_allocated(stopped, tmp_path):
    """Sizes that cannot fit were found out by the allocator: model.n_layer=1000000 failed after
    99 s, train.eval_batches=100000000 ran for ever, [MASK:1000000000] was a MemoryError
    traceback, a huge --num/--steps/--length ran until the machine stopped it. Each is now a
    one-line UsageError before anything of that size is made, with the estimate in the message
    (counted: the projected-time refusal comes after two network calls, not by running out the
    clock; a wall-clock bound here failed on a busy machine)."""
    from textdiffusion import Pipeline
    from textdiffusion.limits.budget import time_limit
    from textdiffusion.training.recipe import train_run

    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 40)
    for train_cfg, model_cfg, needle in [
        ({}, {"n_layer": 1_000_000}, r"needs about [\d.]+ TB of memory \(.*parameters; .*lower"),
        ({"eval_batches": 10**12}, {}, r"validation batches: [\d.]+ PB.*lower train.eval_batches"),  # no machine has it
        ({"batch_size": 10**11}, {}, r"activations: [\d.]+ PB.*lower train.batch_size"),
    ]:
        cfg = Config(model=ModelConfig(**{"n_layer": 1, "n_head": 2, "d_model": 32, "context": 16, **model_cfg}),
                     data=DataConfig(path=str(text)), train=TrainConfig(max_steps=2, **train_cfg))
        with pytest.raises(UsageError, match=needle):
            train_run(cfg, tmp_path / "big", progress=False)
        assert not (tmp_path / "big").exists()
    pipe = Pipeline.from_pretrained(str(stopped / "run"))
    for call, needle in [
        (lambda: pipe.generate(num=1_000_000_000, length=8), r"1,000,000,000 samples of 8 tokens need about .*\(--num\)"),
        (lambda: pipe.generate(length=1_000_000_000), "exceeds the model context"),
        (lambda: pipe.generate(length=8, steps=10_000_000), "more than 1,000,000"),
        (lambda: pipe.infill("[MASK:1000000000]"), "needs 1,000,000,000 tokens .*exceeds the model context"),
        (lambda: pipe.infill("[MASK:1-1000000000]"), "asks for up to 1,000,000,000 tokens"),
    ]:
        with pytest.raises(UsageError, match=needle):
            call()
    calls = []
    hook = pipe.run.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        # a 10 s budget: a million steps take minutes on any CPU (>= 50 us a step), two steps far less
        with time_limit(10), pytest.raises(UsageError, match=r"1,000,000 steps would take about .*--max-seconds"):
            pipe.generate(length=8, steps=1_000_000)
    finally:
        hook.remove()
    assert len(calls) <= 2  # refused after its second network call, not found out by running (a count, not seconds)


def test_characters_the_tokenizer_cannot_spell_are_refused_by_name(stopped):
    """The prompt was documented as kept verbatim, but characters the tokenizer never saw were
    dropped ("def 🦄(x):" came back as "def (x):"). Now every text a user gives (prompt,
    template, edited text, scored text) is refused naming the characters."""
    from textdiffusion import Pipeline

    pipe = Pipeline.from_pretrained(str(stopped / "run"))  # the Markov chain's tokenizer: letters a-h
    for call in (lambda: pipe.generate("ab🦄", length=4), lambda: pipe.infill("a🦄[MASK]b"),
                 lambda: pipe.edit("ab🦄cd", span=(0, 2)), lambda: pipe.score("ab🦄")):
        with pytest.raises(TokenizerError, match=r"cannot spell: '🦄' \(U\+1F984\)"):
            call()
    assert isinstance(TokenizerError("x"), TextDiffusionError)


def _sigint_during(args: list, delays: list) -> list[tuple[float, int, str]]:
    """Ctrl-C after each delay (a pair of delays: Ctrl-C twice)."""
    out = []
    cmd = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "textdiffusion"]
    for delay in delays:
        p = subprocess.Popen([*cmd, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        waited = 0.0
        for at in delay if isinstance(delay, tuple) else (delay,):
            time.sleep(at - waited)
            waited = at
            p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
        out.append((delay, p.returncode, err))
    return out


def test_ctrl_c_at_any_moment_of_start_up_is_one_line(stopped):
    """Ctrl-C while the command started (importing torch) printed a 40-line traceback, and in
    torch's C++ start-up aborted the process ("terminate called ... KeyboardInterrupt", exit
    -6); a second Ctrl-C right after the first sometimes printed an atexit traceback. Now, at
    every moment, it is "textdiffusion: interrupted" and exit 130."""
    # (the first ~35 ms, before the entry point runs, are the interpreter's own start-up: not tried)
    delays = [0.12, 0.2, 0.3, 0.5, 0.8, (0.8, 0.82), (1.0, 1.05)]
    sample = ["sample", stopped / "run", "--steps", "4000", "--length", "8"]  # seconds of sampling after start-up
    for delay, code, err in _sigint_during(sample, delays):
        assert code == 130 and "Traceback" not in err and "terminate" not in err, (delay, code, err)
        assert err.strip().splitlines()[-1] == "textdiffusion: interrupted", (delay, err)


class _Planted:
    """Unpickling this creates a file: the proof that a loader ran a pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_disguised_as_safetensors_is_never_run(stopped, splits, tmp_path):
    """Weights, EMA and optimizer files that are pickles (what torch.save writes) are refused as
    corrupt and never unpickled: the planted object's side effect (creating a file) never
    happens, on load and on --resume. Catches a loader that falls back to torch.load/pickle."""
    import pickle

    from textdiffusion.runs import load_run

    run, marker = tmp_path / "run", tmp_path / "ran"
    shutil.copytree(stopped / "run", run)
    for name in ("model", "ema", "optimizer"):
        (checkpoint_dir(run) / f"{name}.safetensors").write_bytes(pickle.dumps(_Planted(marker)))
    with pytest.raises(CheckpointError, match="corrupt checkpoint file"):
        load_run(run)
    with pytest.raises(CheckpointError, match="corrupt checkpoint file"):
        train(_cfg(), run, splits, tokenizer(), progress=False, resume=True)
    assert not marker.exists()


def test_a_failed_start_leaves_the_folder_as_it_was(tmp_path):
    """A train into an empty folder that fails before its first checkpoint (here: no such data)
    left its config.json behind, so the corrected command was refused ("holds a run that
    stopped...") and --resume replayed the bad data path. Now the folder is empty again; a
    temporary file a kill left behind (.config.json.tmp) does not make a folder someone's; a run
    whose checkpoint/ was deleted after it logged past a checkpoint is not silently restarted."""
    from textdiffusion.training.recipe import resume_run, train_run

    out = tmp_path / "out"
    out.mkdir()
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 40)

    def cfg(path):
        return Config(model=ModelConfig(n_layer=1, n_head=2, d_model=16, context=16), data=DataConfig(path=str(path)),
                      train=TrainConfig(batch_size=4, max_steps=4, eval_every=4, eval_batches=1, ckpt_every=2))

    with pytest.raises(TextDiffusionError):
        train_run(cfg(tmp_path / "nosuch.txt"), out, progress=False)
    assert list(out.iterdir()) == []
    (out / ".config.json.tmp").write_text("{")
    assert train_run(cfg(text), out, progress=False).step == 4
    shutil.rmtree(out / "checkpoint")
    with pytest.raises(CheckpointError, match="was checkpoint/ deleted"):
        resume_run(out, progress=False)


def test_weights_the_user_cannot_read_are_named_as_unreadable(stopped, tmp_path):
    """A weights file without read permission was reported as "corrupt checkpoint file ...: No such
    file or directory" (safetensors says that for EACCES, so the permission branch never ran). As
    root, file modes do not apply: the command runs without the capabilities that bypass them
    (setpriv), as a user would meet it."""
    run = tmp_path / "run"
    shutil.copytree(stopped / "run", run)
    for name in ("model.safetensors", "ema.safetensors"):
        if (checkpoint_dir(run) / name).exists():
            (checkpoint_dir(run) / name).chmod(0)
    cmd = [sys.executable, "-m", "textdiffusion", "sample", str(run), "--length", "4", "--steps", "2"]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    line = _one_line(done)
    assert line.startswith("textdiffusion: error: cannot read ") and "permission denied" in line and "chmod" in line, line
