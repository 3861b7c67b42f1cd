"""The front door: HTTP and WebSocket endpoints that terminate callers' media (Twilio today)."""
