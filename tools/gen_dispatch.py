"""Regenerate tapegrad/compile/_generated_dispatch.py from the op registry.

    python tools/gen_dispatch.py          # write the file
    python tools/gen_dispatch.py --check  # exit 1 if the committed file is stale
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tapegrad.compile import dispatch  # noqa: E402


def main(argv):
    if "--check" in argv:
        with open(dispatch.GENERATED_PATH) as f:
            ok = f.read() == dispatch.generate_source()
        print("up to date" if ok else "STALE: run python tools/gen_dispatch.py")
        return 0 if ok else 1
    print("wrote", dispatch.write())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
