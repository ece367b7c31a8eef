"""The CLI's help names what really exists."""

from projections import Projection
from tidings.cli.data import PROJECTIONS


def test_the_projection_help_names_every_projection() -> None:
    assert sorted(PROJECTIONS.split(", ")) == sorted(Projection.registry)


def test_no_help_text_holds_brackets_rich_would_take_for_markup() -> None:
    """Rich drops `[anything.like.this]` from a help text as an unknown style tag."""
    import re

    import typer

    from tidings.cli import app

    def commands(group: typer.Typer) -> list[typer.models.CommandInfo]:
        found = list(group.registered_commands)
        for sub in group.registered_groups:
            if sub.typer_instance is not None:
                found += commands(sub.typer_instance)
        return found

    helps = [c.help or (c.callback.__doc__ if c.callback else "") or "" for c in commands(app)]
    assert len(helps) > 20
    swallowed = [h for h in helps if re.search(r"(?<!\\)\[[a-z][\w. =/-]*\]", h)]
    assert not swallowed, swallowed
