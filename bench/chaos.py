#!/usr/bin/env python3
"""The chaos harness, as a script: ``python bench/chaos.py --items 3000 --minutes 5 ...``.

The harness itself is ``parecer.devkit.chaos`` (``tests/test_chaos.py`` runs its short
form); ``python bench/chaos.py -h`` lists the knobs.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "runner") not in sys.path:  # run from a checkout without an install
    sys.path.insert(1, str(ROOT / "runner"))

from parecer.devkit import chaos  # noqa: E402

if __name__ == "__main__":
    sys.exit(chaos.main())
