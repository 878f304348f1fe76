"""Test-suite settings: a writable Numba cache, hypothesis profiles, the ``slow`` marker.

``NUMBA_CACHE_DIR`` must be set before numba is imported (numba reads it at
import), so it is set at the top of this file, which pytest loads before any
test module.  Default: ``.numba_cache/`` at the repository root.

Hypothesis profiles: ``ci`` (chosen when the ``CI`` environment variable is
set: derandomized, no example database) and ``dev`` (random); both have no
deadline and modest example counts so the whole suite stays well under ten
minutes on two cores.  ``HYPOTHESIS_PROFILE`` picks one explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# the shared row checkers of tests/ops/ get pytest's assertion messages too
pytest.register_assert_rewrite("tests.ops.checks")

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is in the `test` extra; property tests skip without it
    settings = None

if settings is not None:
    _common = dict(
        deadline=None,
        max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "25")),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )
    settings.register_profile("ci", derandomize=True, database=None, **_common)
    settings.register_profile("dev", **_common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running tests (deselect with -m 'not slow')")
