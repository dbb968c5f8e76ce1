"""The README's Python examples run as pasted."""
import pathlib
import re

import pytest

from fastdnas import cli

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
RETRAIN_RUN = "runs/digits/retrain"


def test_the_readme_has_python_examples():
    assert len(PYTHON_BLOCKS) >= 5


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_readme_python_example_runs(index, tmp_path, monkeypatch):
    block = PYTHON_BLOCKS[index]
    monkeypatch.chdir(tmp_path)
    if RETRAIN_RUN in block:  # the example that reads a retraining's output: a tiny one to read
        genotype = tmp_path / "genotype.txt"
        genotype.write_text(str(__import__("fastdnas.darts", fromlist=["DARTS_V2"]).DARTS_V2))
        assert cli.main(["train", "darts", "--genotype", str(genotype), "--epochs", "1", "--init-channels", "4",
                         "--layers", "2", "--threads", "1", "--out", RETRAIN_RUN]) == 0
    exec(compile(block, f"README.md python block {index + 1}", "exec"), {"__name__": "readme"})
