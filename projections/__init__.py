"""Projections: topics folded into PostgreSQL tables, offsets stored with the rows."""

from projections import audiences, delivery_status, devices, inbox, recipients, suppressions
from projections.base import Projection, Runner

__all__ = [
    "Projection",
    "Runner",
    "audiences",
    "delivery_status",
    "devices",
    "inbox",
    "recipients",
    "suppressions",
]
