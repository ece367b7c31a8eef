"""tidings: event-sourced, multi-channel notifications on Apache Kafka."""

__version__ = "0.1.0"
