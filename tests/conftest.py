import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _token_cache(tmp_path_factory, monkeypatch):
    """Tokenized-corpus cache in a temporary folder: tests never touch ~/.cache."""
    monkeypatch.setenv("TEXTDIFFUSION_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
