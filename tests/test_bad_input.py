"""Bad input on the command line and in the API: each is refused in one line that names the
problem and its fix, exit 2, with nothing left behind; never a traceback, never exit 70 (which
stays for real bugs). Each test names the defect it reproduces; each failed on the code before
its fix."""

import json
import os
import shutil

import pytest
import torch
from commands import in_process
from safetensors.torch import load_file, save_file

from textdiffusion.errors import CheckpointError


def _one_line_error(result) -> str:
    """The error line of a refused command: exit 2, one line on stderr, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("textdiffusion: error: "), result.stderr
    return lines[0]


# 1. text files that are not UTF-8 ----------------------------------------------------------------

@pytest.mark.parametrize("content, byte, offset, fix", [
    (b"caf\xe9 [MASK:3]", "0xe9", 3, "convert it to UTF-8 first, e.g. iconv -f latin1 -t utf-8"),  # Latin-1
    (b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\xff\xfe", "0xff", 11, "binary (or UTF-16) file: give a UTF-8 text file"),
])
@pytest.mark.parametrize("command", ["infill", "edit"])
def test_a_file_that_is_not_utf8_is_named_with_its_first_bad_byte(cycle_dir, tmp_path, command, content, byte, offset,
                                                                  fix):
    """infill --file / edit --file with a Latin-1 or binary file: an uncaught UnicodeDecodeError,
    exit 70 ("internal error (a bug, not your input)"). Now: the file, the first byte that is not
    UTF-8, its offset, and the fix (convert it; for a binary file, give text)."""
    path = tmp_path / "text.txt"
    path.write_bytes(content)
    line = _one_line_error(in_process(command, cycle_dir, "--file", path))
    assert f"{path} is not UTF-8 text (byte {byte} at offset {offset})" in line and fix in line


def test_standard_input_that_is_not_utf8_is_refused_in_one_line(cycle_dir):
    """infill RUN - with Latin-1 on standard input: exit 70 (UnicodeDecodeError) under a UTF-8
    locale, and under the C locale (surrogate escapes) a puzzling "characters this model's
    tokenizer cannot spell: U+DCE9". Now: standard input is named, with the fix."""
    line = _one_line_error(in_process("infill", cycle_dir, "-", stdin=b"caf\xe9 [MASK:3]"))
    assert "standard input is not UTF-8 text" in line and "0xe9 at offset 3" in line and "iconv" in line


@pytest.mark.parametrize("name, content", [("corpus.txt", b"caf\xe9 au lait\n" * 50),
                                           ("corpus.jsonl", b'{"text": "tea"}\n{"text": "caf\xe9"}\n')])
def test_training_data_that_is_not_utf8_names_the_fix(tmp_path, name, content):
    """train --data with a Latin-1 text or JSONL file said only "is not UTF-8 text" (JSONL: "after
    line 0" for a bad first line, the line before the bad one): no fix, no place. Now: the line
    or byte offset and how to convert the file; no run directory is created."""
    path = tmp_path / name
    path.write_bytes(content)
    line = _one_line_error(in_process("train", "--data", path, "--out", tmp_path / "run", "--quiet"))
    where = "line 2" if name.endswith(".jsonl") else "byte 0xe9 at offset 3"
    assert f"{path} is not UTF-8 text" in line and where in line and "iconv -f latin1 -t utf-8" in line
    assert not (tmp_path / "run").exists()


# 2. numbers that are not finite ------------------------------------------------------------------

@pytest.mark.parametrize("lr", ["nan", "inf", "-inf", "0", "-1", "1e9"])
def test_train_classifier_refuses_a_learning_rate_that_is_not_a_positive_finite_number(cycle_dir, tmp_path, lr):
    """train-classifier --lr nan: torch's "Invalid learning rate: nan" escaped as exit 70; --lr inf
    and --lr 1e9 trained and saved a classifier of NaN weights (exit 0). Now: refused while the
    command line is parsed, naming --lr, before any run loads."""
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps({"text": "abcdefgh" * 4, "label": str(i % 2)}) + "\n" for i in range(40)))
    out = tmp_path / "classifier"
    result = in_process("train-classifier", cycle_dir, "--data", data, "--out", out, f"--lr={lr}", "--steps", "1",
                        "--quiet")
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "argument --lr" in last and "positive, finite" in last and "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("setting", ["train.weight_decay=-1", "train.beta2=1.5"])
def test_train_refuses_an_optimizer_setting_out_of_range(tmp_path, setting):
    """train --set train.weight_decay=-1 trained (a decay that grows every weight) and --set
    train.beta2=1.5 failed inside AdamW, blamed on "train.fused_adamw=on is not supported here".
    (train's other numbers, nan and inf included, were already checked with the config.) Now the
    config names the key and its range, before anything is written."""
    from textdiffusion.config import load_config
    from textdiffusion.errors import ConfigError

    key = setting.partition("=")[0]
    with pytest.raises(ConfigError, match=key):
        load_config(None, [setting])
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcdefgh " * 300)
    line = _one_line_error(in_process("train", "--data", corpus, "--out", tmp_path / "run", "--set", setting,
                                      "--set", "train.max_steps=1", "--quiet"))
    assert key in line and "must be" in line
    assert not (tmp_path / "run").exists()


# 3. weights that are NaN or inf ------------------------------------------------------------------

@pytest.fixture
def nan_run(cycle_dir, tmp_path):
    """A copy of the tiny run whose weights are all NaN (a diverged or damaged checkpoint)."""
    run = shutil.copytree(cycle_dir, tmp_path / "nan-run")
    for path in (run / "checkpoint").glob("*.safetensors"):
        if path.name in ("model.safetensors", "ema.safetensors"):
            save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(str(path)).items()}, str(path))
    return run


def test_a_run_whose_weights_are_nan_is_refused_where_runs_load(nan_run):
    """sample RUN with a checkpoint of NaN weights: exit 70 (the samplers' "probability tensor
    contains either inf, nan" from torch). Now: load_run refuses it in one CheckpointError naming
    the file and the fix, so sample, generate, eval and serve all get it."""
    from textdiffusion.runs import load_run

    weights = nan_run / "checkpoint" / "model.safetensors"
    with pytest.raises(CheckpointError, match="hold NaN or inf values") as info:
        load_run(nan_run)
    assert str(weights) in str(info.value) and "lower" in str(info.value)
    line = _one_line_error(in_process("sample", nan_run, "--steps", "2"))
    assert f"the weights in {weights} hold NaN or inf values" in line and "retrain" in line


# 4. evaluation data that holds no text -----------------------------------------------------------

@pytest.mark.parametrize("content", ["", "  \n\n\t \n"])
def test_eval_on_a_file_without_text_names_the_file(cycle_dir, tmp_path, content):
    """eval --data EMPTY.txt (or a file of whitespace) said "evaluation split has 1 tokens, fewer
    than 25": the end-of-text token of an empty document, counted as text. Now: the file holds no
    text, and what to give instead."""
    path = tmp_path / "empty.txt"
    path.write_text(content)
    line = _one_line_error(in_process("eval", cycle_dir, "--data", path, "--num-samples", "0"))
    assert f"{path} holds no text" in line and "give" in line and "tokens" not in line


# 5. viz --trace with a file that is not a trace --------------------------------------------------

@pytest.mark.parametrize("content", ["not json at all", '{"a": 1}', "[1, 2]", None])
def test_viz_with_a_bad_trace_leaves_no_output_folder(tmp_path, content):
    """viz --trace FILE --out DIR with FILE not JSON, JSON that is not a trace, or no FILE at all:
    refused, but DIR was created first and left behind, empty. Now: the trace is read and
    checked before DIR is made, and the error names FILE."""
    trace = tmp_path / "trace.json"
    if content is not None:
        trace.write_text(content)
    out = tmp_path / "viz"
    line = _one_line_error(in_process("viz", "--trace", trace, "--out", out))
    assert str(trace) in line
    assert not out.exists()


# 6. exported files readable by others ------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("format", ["transformers", "textdiffusion"])
def test_exported_files_get_the_umask_permissions(cycle_dir, tmp_path, format):
    """export --format transformers wrote model.safetensors with mode 0600 (safetensors creates its
    files readable by the owner only; transformers' save_pretrained writes through it), which
    locks other users out of a shared model. Now every file of an export has 0666 less the umask."""
    pytest.importorskip("transformers")
    out = tmp_path / "export"
    result = in_process("export", cycle_dir, "--out", out, "--format", format)
    assert result.returncode == 0, result.stderr
    expected = 0o666 & ~_umask()
    modes = {str(f.relative_to(out)): oct(f.stat().st_mode & 0o777) for f in out.rglob("*") if f.is_file()}
    assert modes and set(modes.values()) == {oct(expected)}, modes


# 7. shipped model names in the API ---------------------------------------------------------------

def test_load_run_takes_a_shipped_model_name():
    """load_run("english") was refused ("run directory not found: english") although the README
    says a shipped model's name works wherever a run directory does. An unknown name is a
    CheckpointError that lists the shipped names."""
    from textdiffusion.runs import load_run, resolve

    run = load_run("english")
    assert run.run_dir == resolve("english") and run.process.name == "masked"
    with pytest.raises(CheckpointError, match="no model named 'klingon'.*english"):
        load_run("klingon")
