"""The committed interpreter modules (kernels, tables, dispatch) equal what the generator makes from the registry."""

import difflib
import os

import pytest

from tapegrad.compile import dispatch


@pytest.mark.parametrize("path", sorted(dispatch.GENERATED.values()), ids=os.path.basename)
def test_generated_dispatch_is_up_to_date(path):
    with open(path) as f:
        committed = f.read()
    fresh = dispatch.generate_sources()[path]
    if committed != fresh:
        diff = "".join(difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True), "committed", "fresh", n=1))
        raise AssertionError(f"tapegrad/compile/{os.path.basename(path)} is stale: run python tools/gen_dispatch.py\n"
                             + diff[:4000])


def test_the_interpreter_file_changes_with_the_kernels_it_inlines():
    # numba's cache keys on the interpreter's own file: a change in a generated kernel must change that file
    base = dispatch.kernels_fingerprint("x = 1\n")
    assert dispatch.kernels_fingerprint("x = 2\n") != base
    src = dispatch.generate_sources()
    assert f"kernels fingerprint: {dispatch.kernels_fingerprint(src[dispatch.GENERATED['kernels']])}" in \
        src[dispatch.GENERATED["dispatch"]]


def test_every_elementwise_row_is_native():
    from tapegrad.compile._generated_tables import NATIVE
    from tapegrad.ops.elemwise import ELEMWISE

    assert all(s.code in NATIVE for s in ELEMWISE)
