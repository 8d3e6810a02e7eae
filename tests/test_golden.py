"""Behaviour kept: every sampler on every process it fits, on prompt, template and edit canvases
and through the control functions, gives exactly the tokens recorded in tests/golden/outputs.json
(float64 tiny models trained here; see tests/golden/cases.py for the cases and how to record).

Catches any change to what a sampler draws, in which order it uses the generator, which
positions a step reveals, how many network calls it makes, or which inputs it refuses: e.g. the
confidence order reversed (18 cases change) or a masked reverse step that unmasks with half its
probability (every masked-process case changes)."""

import json

import pytest
from golden.cases import OUTPUTS, outputs, train_runs


@pytest.fixture(scope="module")
def golden_runs(tmp_path_factory):
    return train_runs(tmp_path_factory.mktemp("golden"))


def test_every_sampler_reproduces_its_golden_outputs(golden_runs):
    want = json.loads(OUTPUTS.read_text())
    got = json.loads(json.dumps(outputs(golden_runs)))  # the same JSON types as the file
    assert sorted(got) == sorted(want), "the golden cases changed: record them anew (tests/golden/cases.py)"
    differ = [k for k in want if got[k] != want[k]]
    assert not differ, f"{len(differ)} of {len(want)} cases changed, e.g. {differ[:5]}"
