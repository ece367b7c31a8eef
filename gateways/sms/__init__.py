"""The SMS channel: Twilio and Vonage providers, GSM-7/UCS-2 segment counting and inbound opt-out keywords."""
