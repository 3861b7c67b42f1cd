"""Transports between a RealtimeSession and the model (the seed's table of transports)."""
