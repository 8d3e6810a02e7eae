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
])
def test_bad_values_name_the_flag(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
