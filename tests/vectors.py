"""Where the published conformance vectors live: ``tests/vectors/`` in this repository (its README names
each file's source and licence; ``MPCW_VECTORS_DIR`` overrides)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VECTORS = Path(os.environ.get("MPCW_VECTORS_DIR") or ROOT / "tests" / "vectors")


def load_json(relpath: str) -> Any:
    path = VECTORS / relpath
    if not path.exists():
        raise FileNotFoundError(f"conformance vectors missing: {path} (expected tests/vectors/)")
    with path.open() as f:
        return json.load(f)
