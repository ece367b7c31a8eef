"""Which PostgreSQL errors a projection retries, which send one record to the DLQ, which stop it."""

import psycopg
import pytest
from psycopg import errors

from projections.base import refused, transient


@pytest.mark.parametrize(
    "error,retried,dead_lettered",
    [
        (psycopg.OperationalError("server closed the connection unexpectedly"), True, False),
        (psycopg.InterfaceError("the connection is closed"), True, False),
        (errors.AdminShutdown(), True, False),
        (errors.SerializationFailure(), True, False),
        (errors.DeadlockDetected(), True, False),
        (errors.LockNotAvailable(), True, False),
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), False, True),
        (errors.ProgramLimitExceeded(), False, True),
        (errors.UntranslatableCharacter(), False, True),
        (errors.NumericValueOutOfRange(), False, True),
        (errors.UniqueViolation(), False, True),
        (errors.UndefinedTable(), False, False),
        (errors.UndefinedColumn(), False, False),
        (errors.InsufficientPrivilege(), False, False),
    ],
)
def test_errors_are_retried_dead_lettered_or_fatal(
    error: psycopg.Error, retried: bool, dead_lettered: bool
) -> None:
    """A value psycopg refuses before sending has no SQLSTATE, like a lost connection: retrying it
    would stop the projection for every tenant, as one NUL in a cancellation's reason could."""
    assert (transient(error), refused(error)) == (retried, dead_lettered)
