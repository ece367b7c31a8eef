from tests.integration.conftest import database, group_id, stack, topic_factory, topology

__all__ = ["database", "group_id", "stack", "topic_factory", "topology"]
