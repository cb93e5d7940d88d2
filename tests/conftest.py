"""Suite-wide test configuration.

Integration tests (``tests/integration``) get real servers from ``tests/integration/conftest.py``:
embedded nats-server and PostgreSQL on free ports by default, external ones when ``MPCW_NATS_URL`` /
``MPCW_DATABASE_URL`` are set (then ``MPCW_DATA_DIR`` must hold the PKI the external NATS trusts).

Every cluster directory a test makes keeps its private keys in a secrets directory outside it
(``services.runtime.secrets_dir``): for the whole session those go under one temporary root
(``MPCW_SECRETS_DIR``, inherited by the processes the tests start), never into the user's home.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.runtime.secrets_dir import SECRETS_DIR_ENV

_HERE = Path(__file__).parent


@pytest.fixture(scope="session", autouse=True)
def secrets_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.environ.get(SECRETS_DIR_ENV):  # the operator chose (an external cluster's secrets)
        yield Path(os.environ[SECRETS_DIR_ENV])
        return
    root = tmp_path_factory.mktemp("mpcw-secrets")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SECRETS_DIR_ENV, str(root))
        yield root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = (
            Path(str(item.fspath)).relative_to(_HERE).parts if str(item.fspath).startswith(str(_HERE)) else ()
        )
        if parts and parts[0] in ("integration", "e2e"):
            item.add_marker(pytest.mark.integration)
        if parts and parts[0] == "e2e":
            item.add_marker(pytest.mark.e2e)
