"""The in-app channel: the recipient's inbox in PostgreSQL, live over the edge's WebSocket."""
