"""The media path between an ingress and a session host, below both: the call vocabulary
(:mod:`.vocabulary`) and the media channel (:mod:`.channel`, a sans-I/O protocol, under the
asyncio adapters :mod:`.channel_client` for the ingress and :mod:`.channel_server` for the host).
Nothing here imports the gateway, telephony or the runtime."""
