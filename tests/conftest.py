"""Test-suite settings: a writable Numba cache, hypothesis profiles, the ``slow`` marker.

``NUMBA_CACHE_DIR`` must be set before numba is imported (numba reads it at
import), so it is set at the top of this file, which pytest loads before any
test module.  Default: ``.numba_cache/`` at the repository root.

Hypothesis profiles: ``ci`` (chosen when the ``CI`` environment variable is
set: derandomized, no example database) and ``dev`` (random); both have no
deadline and modest example counts so the whole suite stays well under ten
minutes on two cores.  ``HYPOTHESIS_PROFILE`` (or pytest's
``--hypothesis-profile``) picks one explicitly.  ``fuzz`` is for local bug
hunts, not CI: 1000 examples a test (``HYPOTHESIS_MAX_EXAMPLES`` overrides),
random, with the example database so a failure replays; ``tests/test_fuzz.py``
scales its per-op-kind and CUDA batches with it (about 3 minutes on two cores):
``HYPOTHESIS_PROFILE=fuzz python -m pytest -q tests/test_fuzz.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# the shared row checkers of tests/ops/ get pytest's assertion messages too
pytest.register_assert_rewrite("tests.ops.checks", "tests.compile.program_checks")

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))
# tier "auto" would compile a whole-tape program for every function called three times: in a suite of
# thousands of small functions that is minutes of background compiling, so the suite keeps "auto" on the
# interpreter and fused loops; tests/compile/test_program.py runs the program tier explicitly (and "auto"
# with the default threshold patched back in)
os.environ.setdefault("TAPEGRAD_PROGRAM_AFTER", "never")

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
    settings.register_profile(
        "fuzz", **{**_common, "max_examples": int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "1000"))}
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


_SIM_TEST = "tests/compile/test_cuda.py::test_cuda_engine_matches_python_under_simulator"
_EARLY = []  # test modules whose worker was started at collection


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(session, config, items):
    """Start the CUDA-simulator worker of ``_SIM_TEST`` now when that test will run, and run the test last: the
    worker runs in a subprocess on the second core while the other tests run (see ``tests/compile/test_cuda.py``),
    and the test only collects its report.  Under pytest-xdist (``-n 2``, the README's command) the other worker
    has the second core, and every worker collects every test: the test runs first instead, in whichever worker
    it is sent to, so that its subprocess does not finish after the rest of the suite."""
    xdist = bool(os.environ.get("PYTEST_XDIST_WORKER"))
    for item in list(items):
        if item.nodeid == _SIM_TEST:
            items.remove(item)
            if xdist:
                items.insert(0, item)
            else:
                item.module.start_early()
                _EARLY.append(item.module)
                items.append(item)


def pytest_sessionfinish(session, exitstatus):
    for mod in _EARLY:
        mod.stop_early()


@pytest.fixture
def no_background_compiles():
    """For tests that record warnings: wait for the background compiles earlier tests queued (numba enters
    ``warnings.catch_warnings`` while compiling; one that straddles the test's own block swaps the warning
    filters and recorder back under it, and the expected warning goes to stderr instead)."""
    from tapegrad.compile.fused import wait_background

    wait_background()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running tests (deselect with -m 'not slow')")
