"""The README's examples run as written (keeps the README true)."""

import pathlib
import re

import pytest

pytest.importorskip("fusedlstm")

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(_python_blocks()) >= 1


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_example_runs(index, capsys):
    code = _python_blocks()[index]
    if re.search(r"^\s*(import torch|from fusedlstm\.torch)", code, flags=re.M):
        pytest.importorskip("torch")
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    # The shapes the example prints in its comments are the ones it printed.
    for expected in re.findall(r"#\s*(\(\d+(?:, \d+)*,?\)(?: \(\d+(?:, \d+)*,?\))*)\s*$", code, flags=re.M):
        assert expected in printed
