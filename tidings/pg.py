"""The connection parameters every long-lived PostgreSQL connection of tidings starts from.

A connection to a host that vanished (a failover moved the address, a partition, a node lost without a
reset) sent nothing back: a projection's writer waited for an answer for as long as the kernel kept
retransmitting (about 15 minutes with Linux's defaults), and an idle connection held that way for ever.
With keepalives an idle connection is found dead within about a minute (30 s idle, then 3 probes 10 s
apart), `tcp_user_timeout` drops one whose sent data goes unacknowledged for 60 s, and a connection
attempt gives up after 10 s. A DSN that sets any of these keeps its own value (an explicit parameter
also beats libpq's `PG...` environment variables, so set them in the DSN).
"""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict, make_conninfo

DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}


def sturdy(dsn: str) -> str:
    """`dsn` with each of `DEFAULTS` it does not set itself."""
    given = conninfo_to_dict(dsn)
    return make_conninfo(dsn, **{k: v for k, v in DEFAULTS.items() if k not in given})
