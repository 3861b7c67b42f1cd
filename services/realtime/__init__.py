"""The Python port of the OpenAI Agents SDK's realtime layer (the seed's transports page).

Typed GA events, the transport interface and its WebSocket implementation, ``RealtimeAgent``,
``RealtimeSession``, function tools, guardrails and ``build_initial_config``.
"""
