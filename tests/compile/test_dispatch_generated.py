"""The committed interpreter dispatch file equals what the generator makes from the registry."""

import difflib

from tapegrad.compile import dispatch


def test_generated_dispatch_is_up_to_date():
    with open(dispatch.GENERATED_PATH) as f:
        committed = f.read()
    fresh = dispatch.generate_source()
    if committed != fresh:
        diff = "".join(difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True), "committed", "fresh", n=1))
        raise AssertionError("tapegrad/compile/_generated_dispatch.py is stale: run python tools/gen_dispatch.py\n"
                             + diff[:4000])


def test_every_elementwise_row_is_native():
    from tapegrad.compile._generated_dispatch import NATIVE
    from tapegrad.ops.elemwise import ELEMWISE

    assert all(s.code in NATIVE for s in ELEMWISE)
