from tests.integration.conftest import database, group_id, namespace, stack, topic_factory, topology

__all__ = ["database", "group_id", "namespace", "stack", "topic_factory", "topology"]
