"""The models shipped inside the package (see MODEL_CARD.md): they load, generate clean text,
keep fixed text when infilling, prefer real text to the same characters shuffled, and survive a
save_pretrained -> from_pretrained round trip."""

import random
import subprocess
import sys

import pytest
import torch

from textdiffusion import Pipeline
from textdiffusion.runs import DEFAULT
from textdiffusion.sampling.cards import available
from textdiffusion.tokenizers import MASK_GLYPH

ENGLISH = ("It is a wise father that knows his own child. I will tell you what I think of it, "
           "and then you shall judge whether I speak the truth.")
CODE = "def add(a, b):\n    return a + b\n\n\nfor i in range(10):\n    print(add(i, 1))\n"


@pytest.fixture(scope="module", params=["english", "code"])
def shipped(request):
    return request.param, Pipeline.from_pretrained(request.param)


def test_both_models_are_shipped_and_english_is_the_default():
    models = available()
    assert {"english", "code"} <= set(models) and DEFAULT == "english"
    for info in models.values():
        assert info["description"]


def test_generate_is_clean_and_seeded(shipped):
    name, pipe = shipped
    prompt = "The meaning of life" if name == "english" else "def "
    a = pipe.generate(prompt, length=48, steps=16, seed=3, trace=True)
    b = pipe.generate(prompt, length=48, steps=16, seed=3)
    assert a.text.startswith(prompt) and len(a.text) > len(prompt) + 20
    assert MASK_GLYPH not in a.text and MASK_GLYPH in a.trace[0]
    assert pipe.tokenizer.mask_id not in a.tokens.tolist()[0]
    assert a.texts == b.texts  # same seed, same text


def test_infill_keeps_the_fixed_text(shipped):
    name, pipe = shipped
    if name == "english":
        before, after = "To be, or not to be: that is the ", ". Whether 'tis nobler in the mind to suffer"
    else:
        before, after = "def area(width, height):\n    ", "\n\n\nprint(area(3, 4))\n"
    out = pipe.infill(before + "[MASK:6]" + after, steps=6, seed=0)
    assert out.text.startswith(before) and out.text.endswith(after)
    assert out.fills[0][0] and out.text == before + out.fills[0][0] + after


def test_score_prefers_real_text_to_its_characters_shuffled(shipped):
    name, pipe = shipped
    text = ENGLISH if name == "english" else CODE
    shuffled = "".join(random.Random(0).sample(text, len(text)))
    real, noise = pipe.score(text, mc_samples=8), pipe.score(shuffled, mc_samples=8)
    assert real < 0.6 * noise, (real, noise)  # bits; clearly, not by Monte Carlo luck


def test_shipped_model_round_trips_through_save_pretrained(tmp_path):
    pipe = Pipeline.from_pretrained()  # the default: English
    again = Pipeline.from_pretrained(pipe.save_pretrained(tmp_path / "copy", dtype="bfloat16"))
    for name, tensor in pipe.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name
    a = pipe.generate("Once upon a time", length=32, steps=8, num=2, seed=11)
    b = again.generate("Once upon a time", length=32, steps=8, num=2, seed=11)
    assert a.texts == b.texts and torch.equal(a.tokens, b.tokens)


def test_generate_command_uses_the_shipped_english_model():
    out = subprocess.run([sys.executable, "-m", "textdiffusion", "generate", "The meaning of life", "--length", "24",
                          "--steps", "8", "--seed", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("The meaning of life") and len(out.stdout.strip()) > 40
    # exactly the text of the library with the English model and its card's settings: the command
    # took the default model, the seed, the length and the steps (a share of alphabetic words, the
    # check this replaces, passed for any English-ish model and any seed)
    expected = Pipeline.from_pretrained("english").generate("The meaning of life", length=24, steps=8, seed=1)
    assert out.stdout == expected.text + "\n"


def test_the_code_model_fills_holes_with_its_card_infill_settings():
    """The code card names the infill settings measured best on held-out holes (confidence order,
    greedy); plain generation keeps the generate settings."""
    pipe = Pipeline.from_pretrained("code")
    assert pipe.infill_defaults["sampler"] == "confidence" and pipe.defaults["sampler"] == "ancestral"
    out = pipe.infill("def area(width, height):\n    return [MASK:4]\n", seed=0)
    assert out.sampler == "confidence" and out.text.startswith("def area(width, height):\n    return ")
    assert pipe.infill("def f(x):\n    [MASK:6]\n", seed=0).text == pipe.infill("def f(x):\n    [MASK:6]\n", seed=1).text
    assert pipe.generate("def ", length=8, steps=4).sampler == "ancestral"


def test_the_readme_prints_what_its_main_command_prints():
    """The README's "What it prints" block is what its main command prints: the text on standard
    output exactly, then the stats line on standard error (its seconds vary with the machine).
    Catches a README left stale by a retrained model or a changed default sampler (it showed a
    text the command had long stopped printing)."""
    import re
    import shlex
    from pathlib import Path

    from commands import cli

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith("textdiffusion generate "))
    printed = readme.split("What it prints", 1)[1].split("```text\n", 1)[1].split("\n```", 1)[0]
    *text, stats = printed.split("\n")
    done = cli(*shlex.split(command.split("#")[0])[1:])
    assert done.returncode == 0, done.stderr
    assert done.stdout == "\n".join(text) + "\n"
    seconds = re.compile(r"[0-9.]+ s\]")
    assert seconds.sub("N s]", done.stderr.strip().splitlines()[-1]) == seconds.sub("N s]", stats)
