"""Which exceptions mean that a server the intake stands on is away (503 with the server named, nothing
internal), and which are something else (None: a 500 that says nothing of the internals)."""

from __future__ import annotations

import asyncpg
import nats.errors
import nats.js.errors
import pytest

from services.intake.app import unavailable


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.PostgresConnectionError("x"),
        asyncpg.CannotConnectNowError("x"),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.InternalClientError("pool upkeep"),
        ConnectionRefusedError(),
        TimeoutError(),
    ],
)
def test_the_database_away_is_a_503(exc: BaseException) -> None:
    err = unavailable(exc)
    assert err is not None and err.status == 503 and err.error == "database unavailable"
    assert str(exc) not in err.detail or not str(exc)


@pytest.mark.parametrize(
    "exc",
    [nats.errors.ConnectionClosedError(), nats.errors.NoServersError(), nats.errors.TimeoutError()],
)
def test_the_bus_away_is_a_503(exc: BaseException) -> None:
    err = unavailable(exc)
    assert err is not None and err.status == 503 and err.error == "bus unavailable"


@pytest.mark.parametrize(
    "exc", [ValueError("bad"), KeyError("k"), nats.js.errors.KeyWrongLastSequenceError(), ZeroDivisionError()]
)
def test_anything_else_is_not_an_absence(exc: BaseException) -> None:
    assert unavailable(exc) is None
