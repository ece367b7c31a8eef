"""The email channel: SMTP and HTTP API providers sharing one message builder (`_message`)."""
