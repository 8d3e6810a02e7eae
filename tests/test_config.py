import pytest

from textdiffusion.config import Config, ConfigError, load_config


def test_toml_and_overrides(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[model]\nn_layer = 3\n[train]\nlr = 0.01\n")
    cfg = load_config(f, ["train.max_steps=7", "model.time_cond=true", "process.schedule=cosine"])
    assert cfg.model.n_layer == 3 and cfg.train.lr == 0.01 and cfg.train.max_steps == 7
    assert cfg.model.time_cond is True and cfg.process.schedule == "cosine"
    assert Config.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("override, message", [
    ("train.nope=1", "unknown config key train.nope"),
    ("bogus.lr=1", "unknown config section"),
    ("train.max_steps=abc", "train.max_steps must be an integer"),
    ("train.max_steps=0", "train.max_steps must be positive"),
    ("model.d_model=100", "divisible"),
    ("process.name=foo", "process.name"),
    ("trainlr=1", "section.key=value"),
    # issue 21: lr=1e39 passed and ended in an internal error (a float32 overflow in AdamW);
    # model.vocab_size / num_labels were accepted and silently replaced by the data's
    ("train.lr=1e39", "train.lr must be positive and at most 10"),
    ("model.vocab_size=1", "model.vocab_size cannot be set: it is the tokenizer's size"),
    ("model.num_labels=3", "model.num_labels cannot be set"),
])
def test_bad_values_name_the_flag(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


# (process, a setting that is for some processes only, its message): refused on that process,
# accepted on the one it is for
PROCESS_ONLY = [
    ("masked", "data.fim_rate=0.5", "fim_rate is for the AR twin", "ar"),
    ("ar", "data.infill_rate=0.5", "infill_rate is for diffusion models", "masked"),
    ("ar", "model.time_cond=true", "time_cond must be false for the AR twin", "masked"),
    ("gaussian", "train.input_noise=0.1", "input_noise replaces input tokens", "uniform"),
    ("masked", "process.self_cond=true", "self_cond is for the gaussian process only", "gaussian"),
]


@pytest.mark.parametrize("process, override, message, fits", PROCESS_ONLY)
def test_settings_for_some_processes_are_checked_by_what_each_process_is(process, override, message, fits):
    """The checks ask the process's registry entry (its backbone: causal for the AR twin,
    embedding for the Gaussian process), not its name: each refuses on a process it is not for
    and accepts on the one it is. Catches a check asking the wrong fact (planted: ``backbone !=
    "causal"`` for the fim_rate check, and ``== "causal"`` for input noise)."""
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"process.name={process}", override])
    load_config(None, [f"process.name={fits}", override])


def test_a_config_file_cannot_set_what_the_data_decides(tmp_path):
    """A TOML [model] vocab_size was silently replaced by the tokenizer's size: refused, naming
    the file and what to set instead."""
    (tmp_path / "c.toml").write_text("[model]\nvocab_size = 1\n")
    with pytest.raises(ConfigError, match=r"model.vocab_size cannot be set in .*c.toml: .*data.vocab_size"):
        load_config(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text("model = 3\n")  # a section that is not a table: named, not a TypeError
    with pytest.raises(ConfigError, match="model"):
        load_config(tmp_path / "c.toml")


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


@pytest.mark.parametrize("override, field, expected", [
    ("model.time_cond=auto", "time_cond", None), ("model.time_cond=none", "time_cond", None),
    ("model.time_cond=yes", "time_cond", True), ("model.time_cond=0", "time_cond", False)])
def test_optional_fields_read_their_real_type(override, field, expected):
    """Coercion follows the fields' real type hints (``bool | None`` here): "auto"/"none" are None,
    a bool spelling is a bool, and the resolved default applies when None (masked: no time input).
    Catches the optional branch left out (planted: every `bool | None` field then refused)."""
    cfg = load_config(None, [override])
    value = getattr(cfg.model, field)
    assert value == (False if expected is None else expected) and isinstance(value, bool)


@pytest.mark.parametrize("override, message", [("train.lr=true", "train.lr must be a number"),
                                               ("model.time_cond=maybe", "model.time_cond must be true or false")])
def test_mistyped_values_name_the_flag(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("name, value, flag", [
    ("ancestral", {"temperature": float("nan")}, "--temperature"), ("ancestral", {"top_p": float("nan")}, "--top-p"),
    ("threshold", {"threshold": float("nan")}, "--threshold"), ("threshold", {"threshold": float("inf")}, "--threshold"),
    ("remdm", {"eta": float("nan")}, "--eta")])
def test_float_options_refuse_nan_and_infinity_by_name(name, value, flag):
    """NaN passes every range check (all comparisons are false) and reached torch as "probability
    tensor contains inf, nan"; --threshold nan was accepted. Each float option refuses NaN and
    infinities by its name as the caller wrote it: the flag on the command line (issue 21, item
    11), the keyword in Python (issue 38: generate(top_p=2) said "--top-p")."""
    from textdiffusion.sampling.registry import make_options, options_named

    key = next(iter(value))
    with pytest.raises(ValueError, match=f"^{key} must be a finite number"):
        make_options(name, value)
    with options_named("flag"), pytest.raises(ValueError, match=f"^{flag} must be a finite number"):
        make_options(name, value)


@pytest.mark.parametrize("override", ["train.lr=nan", "train.lr=inf", "train.grad_clip=-inf"])
def test_config_floats_refuse_nan_and_infinity(override):
    with pytest.raises(ValueError, match="must be a finite number"):
        load_config(None, [override])


def test_guidance_scale_refuses_nan():
    from textdiffusion.control.guidance import ClassifierGuided

    with pytest.raises(ValueError, match="must be >= 0 and finite"):
        ClassifierGuided(None, None, None, 0, float("nan"))


def test_bad_config_files_are_one_line_errors_naming_the_file(tmp_path):
    """A config.json holding a JSON list was an AttributeError traceback; a TOML file that is not
    UTF-8 gave a codec error naming no file; a JSONL corpus saved with a byte-order mark failed on
    its first line with "expected a JSON object" (issue 21, item 8). Each: a one-line error that
    names the file, or (the BOM) just read."""
    from textdiffusion.data.sources import read_documents
    from textdiffusion.runs import read_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config.json is corrupt: a config is a table of sections .*got a list"):
        read_run(run)
    toml = tmp_path / "latin1.toml"
    toml.write_bytes("[train]\nlr = 0.1  # café\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"config file {toml} is not UTF-8 text"):
        load_config(toml)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + b'{"text": "hello"}\n{"text": "world"}\n')
    assert [d.text for d in read_documents(str(bom), "*.jsonl")] == ["hello", "world"]
    bom_toml = tmp_path / "bom.toml"
    bom_toml.write_bytes(b"\xef\xbb\xbf[train]\nlr = 0.25\n")
    assert load_config(bom_toml).train.lr == 0.25


def test_option_errors_name_the_option_as_the_caller_wrote_it(cycle_dir, tmp_path):
    """The Python API says top_p, the command line --top-p, export's KEY=VALUE settings top_p.
    Catches the flag leaking into every caller's message (generate(top_p=2) and export --default
    top_p=5 both said "--top-p must be <= 1")."""
    from commands import in_process

    from textdiffusion import Pipeline
    from textdiffusion.errors import UsageError

    with pytest.raises(UsageError, match=r"^top_p must be <= 1; got 2"):
        Pipeline.from_pretrained(cycle_dir).generate("ab", top_p=2, length=4, steps=2)
    done = in_process("export", cycle_dir, "--out", tmp_path / "out", "--default", "top_p=5")
    assert done.returncode == 2 and done.stderr.strip().endswith(" top_p must be <= 1; got 5"), done.stderr
    assert not (tmp_path / "out").exists()
    done = in_process("generate", "--model", cycle_dir, "ab", "--top-p", "2", "--length", "4")
    assert done.returncode == 2 and done.stderr.strip().endswith("--top-p must be <= 1; got 2.0")
