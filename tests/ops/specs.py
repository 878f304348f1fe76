"""All spec rows: ``ROWS`` collects ``ROWS`` from every ``tests/ops/specs_*.py`` present.

A module that fails to import is recorded in ``IMPORT_ERRORS`` (module name ->
traceback) instead of breaking collection of every other family's rows;
``tests/ops/test_specs.py`` reports it as a failing test.
"""

from __future__ import annotations

import importlib
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def spec_modules():
    """Names of the ``specs_<family>`` modules beside this file, sorted."""
    return sorted(p.stem for p in HERE.glob("specs_*.py"))


def _collect():
    rows, errors, seen = [], {}, {}
    for name in spec_modules():
        family = name[len("specs_"):]
        try:
            module = importlib.import_module(f"tests.ops.{name}")
        except Exception:  # noqa: BLE001 - reported as a test failure
            errors[name] = traceback.format_exc()
            continue
        for k, row in enumerate(getattr(module, "ROWS", [])):
            rid = row.id or f"{row.code.lower()}-{k}"
            if rid in seen:  # keep ids unique across families
                rid = f"{family}:{rid}"
                n = 2
                while rid in seen:
                    rid = f"{family}:{row.id or row.code.lower()}-{n}"
                    n += 1
            seen[rid] = family
            row.id = rid
            row.family = family
            rows.append(row)
    return rows, errors


ROWS, IMPORT_ERRORS = _collect()
