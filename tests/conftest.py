"""Suite-wide test configuration.

Integration tests (``tests/integration``) get real servers from ``tests/integration/conftest.py``:
embedded nats-server and PostgreSQL on free ports by default, external ones when ``MPCW_NATS_URL`` /
``MPCW_DATABASE_URL`` are set (then ``MPCW_DATA_DIR`` must hold the PKI the external NATS trusts).
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = (
            Path(str(item.fspath)).relative_to(_HERE).parts if str(item.fspath).startswith(str(_HERE)) else ()
        )
        if parts and parts[0] in ("integration", "e2e"):
            item.add_marker(pytest.mark.integration)
        if parts and parts[0] == "e2e":
            item.add_marker(pytest.mark.e2e)
