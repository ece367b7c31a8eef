"""The CLI's help names what really exists."""

from projections import Projection
from tidings.cli.data import PROJECTIONS


def test_the_projection_help_names_every_projection() -> None:
    assert sorted(PROJECTIONS.split(", ")) == sorted(Projection.registry)
