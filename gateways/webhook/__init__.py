"""The webhook channel: Standard Webhooks deliveries to recipients' endpoints."""
