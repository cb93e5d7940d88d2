"""Where the published conformance vectors live: ``../shared/vectors`` beside the project root
(``MPCW_VECTORS_DIR`` overrides)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VECTORS = Path(os.environ.get("MPCW_VECTORS_DIR") or ROOT.parent / "shared" / "vectors")


def load_json(relpath: str) -> Any:
    path = VECTORS / relpath
    if not path.exists():
        raise FileNotFoundError(f"conformance vectors missing: {path} (expected ../shared/vectors)")
    with path.open() as f:
        return json.load(f)
