"""Regenerate tapegrad/compile/_generated_{kernels,tables,dispatch}.py from the op registry.

    python tools/gen_dispatch.py          # write the files
    python tools/gen_dispatch.py --check  # exit 1 if a committed file is stale
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tapegrad.compile import dispatch  # noqa: E402


def main(argv):
    if "--check" in argv:
        stale = []
        for path, src in dispatch.generate_sources().items():
            with open(path) as f:
                if f.read() != src:
                    stale.append(os.path.basename(path))
        print(f"STALE ({', '.join(stale)}): run python tools/gen_dispatch.py" if stale else "up to date")
        return 1 if stale else 0
    print("wrote", ", ".join(dispatch.write()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
