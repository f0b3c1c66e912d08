"""The README's promises: the Python snippet runs exactly as printed, and the two commands at
the top are the ones that work on a fresh machine."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

TOP_COMMANDS = [
    'pip install torch==2.13.0 && pip install -e ".[cpu,train]" && lmae demo',
    'pip install torch==2.13.0 && pip install -e ".[cpu,train,dev]" && python -m pytest -q',
]


def _first_python_block(text: str) -> str:
    m = re.search(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert m, "README.md has no ```python block"
    return m.group(1)


def test_top_commands_are_the_two_fresh_machine_commands():
    lines = README.read_text().splitlines()
    first_section = next(i for i, line in enumerate(lines) if line.startswith("## "))
    second_section = next(i for i, line in enumerate(lines) if i > first_section and line.startswith("## "))
    commands = [line for line in lines if line.startswith("pip install")]
    assert commands[:2] == TOP_COMMANDS
    top = [line for line in lines[:second_section] if line.startswith("pip install")]
    assert top == TOP_COMMANDS, "the two commands must be the first section's, at the top of the README"


def test_python_snippet_runs_as_printed(onnx_bundle, tmp_path, monkeypatch):
    code = _first_python_block(README.read_text())
    assert '"bundle/"' in code, "the snippet loads the model the test provides at bundle/"
    (tmp_path / "bundle").symlink_to(onnx_bundle, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LMAE_MALLOC_DEFAULTS", "1")  # keep_freed_memory() leaves this test process as it is
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, str(README) + ":python", "exec"), namespace)
    r = namespace["r"]
    assert r.ok and r.label.shape == (120, 160), "the last batch result is the second pair's"
