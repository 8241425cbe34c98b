"""The scripts' own tests (rig.py and the rig's retry in tests/linux/guests.py, demo.py).

scripts/ is no package: pytest puts only this folder on ``sys.path``, so the
checkout's root goes there too (as the scripts put it) for ``tests.linux``.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:
    sys.path.insert(0, REPO)
