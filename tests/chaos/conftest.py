from tests.integration.conftest import group_id, stack, topic_factory, topology

__all__ = ["group_id", "stack", "topic_factory", "topology"]
