"""The push channel: APNs, FCM and Web Push providers, each accepting only devices of its own platform."""
