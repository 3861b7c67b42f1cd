"""Our OpenAI-Realtime-compatible (GA) model server, for offline development, tests and load tests.

``RealtimeEngine`` is the sans-I/O per-session state machine; ``LocalModelServer`` runs it over
WebSockets and WebRTC (``POST /v1/realtime/calls``) on one port; ``serve_forever`` is what
``callray model`` calls.
"""

from .engine import RealtimeEngine
from .scenario import Scenario, load_scenario
from .server import LocalModelServer, serve_forever
from .speech import SpeechSynthesizer

__all__ = [
    "LocalModelServer",
    "RealtimeEngine",
    "Scenario",
    "SpeechSynthesizer",
    "load_scenario",
    "serve_forever",
]
