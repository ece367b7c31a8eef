"""The keepalives and timeouts every long-lived PostgreSQL connection starts from, and a DSN's own."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from tidings.pg import DEFAULTS, sturdy


@pytest.mark.parametrize(
    "dsn",
    ["postgresql://tidings@127.0.0.1:5432/tidings", "host=127.0.0.1 port=5432 dbname=tidings user=tidings"],
)
def test_a_dsn_without_them_gets_every_default_and_keeps_its_own_parameters(dsn: str) -> None:
    got = conninfo_to_dict(sturdy(dsn))
    assert {k: got[k] for k in DEFAULTS} == DEFAULTS
    own = {"host": "127.0.0.1", "port": "5432", "dbname": "tidings", "user": "tidings"}
    assert {k: got[k] for k in own} == own


def test_a_dsn_that_sets_one_keeps_its_value() -> None:
    got = conninfo_to_dict(sturdy("postgresql://127.0.0.1/tidings?connect_timeout=3&keepalives=0"))
    assert got["connect_timeout"] == "3" and got["keepalives"] == "0"
    assert got["tcp_user_timeout"] == DEFAULTS["tcp_user_timeout"]
