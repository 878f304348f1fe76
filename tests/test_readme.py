"""Every ```python block of README.md runs, as written, in a fresh namespace.

Blocks run in order, each in its own ``{"__name__": "__readme__"}`` namespace,
so a snippet may not rely on another's names.  A snippet that asks for
``device="cpu"`` runs on the Numba CPU engine; only when that engine cannot be
imported at all is ``device="cpu"`` rewritten to ``device="python"`` (the test
says so in its output).  ``device="cuda"`` is always mapped to ``"python"``
(no GPU is assumed).  Set ``TAPEGRAD_README_DEVICE=python`` to force the
mapping for ``"cpu"`` too (e.g. while the CPU engine is being rebuilt).
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text):
    """``[(line_number, code), ...]`` for each fenced ```python block of ``text``."""
    out = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start(1)) + 1
        out.append((line, m.group(1)))
    return out


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def _cpu_available():
    if os.environ.get("TAPEGRAD_README_DEVICE") == "python":
        return False
    try:
        importlib.import_module("tapegrad.compile.cpu").CPUEngine  # noqa: B018
    except (ImportError, AttributeError):
        return False
    return True


def _prepare(code):
    notes = []
    if 'device="cpu"' in code and not _cpu_available():
        code = code.replace('device="cpu"', 'device="python"')
        notes.append('device="cpu" -> "python" (CPU engine unavailable)')
    if 'device="cuda"' in code:
        code = code.replace('device="cuda"', 'device="python"')
        notes.append('device="cuda" -> "python"')
    return code, notes


def test_readme_has_the_expected_sections_and_blocks():
    text = README.read_text(encoding="utf-8")
    for heading in ["## Quickstart", "## Errors you can expect", "## scipy.optimize", "## Pickling and Dask",
                    "## Hypothesis strategies for your own tests"]:
        assert heading in text, heading
    assert len(BLOCKS) >= 6
    assert "tapegrad.testing.strategies" in text.split("## Hypothesis strategies for your own tests")[1]


def test_block_extraction():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\nz = 3\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = 2\nz = 3\n")]


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{ln}" for ln, _ in BLOCKS])
def test_readme_block_runs(line, code, capsys):
    code, notes = _prepare(code)
    namespace = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)
    if notes:
        with capsys.disabled():
            print(f"\nREADME.md:{line}: ran with " + "; ".join(notes))
