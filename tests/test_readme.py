"""The Python examples of README.md run as written (with X and Y made up for them), and so
do the API lines of shared DESIGN.md's contract that README repeats."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block_runs(i, tmp_path, monkeypatch):
    shutil.copytree(ROOT / "examples", tmp_path / "examples", ignore=shutil.ignore_patterns("build"))
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    namespace = {"X": rng.uniform(0, 1, (100, 64)).astype(np.float32),
                 "Y": rng.integers(0, 10, 100).astype(np.int32)}
    exec(compile(BLOCKS[i], f"README.md python block {i + 1}", "exec"), namespace)
    if "report" in namespace:
        assert namespace["report"].ok
    if "outs" in namespace and "grads" in namespace:
        assert namespace["grads"]["W"].shape == namespace["params"]["W"].shape
    if "history" in namespace:
        assert len(namespace["history"]) == 5 and namespace["history"][-1] < namespace["history"][0]


def test_readme_has_the_two_quickstart_commands_and_ci_runs_the_second_verbatim():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```sh\n(.*?)```", text, re.S).group(1)
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2 and commands[0].endswith("graphc demo") and "pytest" in commands[1]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_readme_error_example_is_what_graphc_prints(tmp_path, monkeypatch, capsys):
    """The README's error example: the command it shows, run, prints exactly the lines it shows."""
    from graphc.tools.cli import main
    block = re.search(r"```\n\$ sed 's/x @ W.T \+ b1/x @ W \+ b1/' examples/one_layer.toml > bad.toml && "
                      r"graphc show bad.toml\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    text = (ROOT / "examples" / "one_layer.toml").read_text()
    assert "x @ W.T + b1" in text
    (tmp_path / "bad.toml").write_text(text.replace("x @ W.T + b1", "x @ W + b1"))
    monkeypatch.chdir(tmp_path)
    assert main(["show", "bad.toml"]) == 2
    assert capsys.readouterr().err == block
