"""Simulated callers and the latency/loss report (``callray loadtest``).

:class:`CallerScript` is what one caller does, whatever its provider. :class:`TwilioCaller` is
the sans-I/O behaviour of one Twilio call's media stream (Twilio's messages, pacing and
playback); SIP callers are :mod:`.sip_uac` (signalling) and :mod:`.rtp_caller` (media).
:func:`run_load` drives many of them against an ingress (Twilio over HTTP and WebSockets, or
SIP/RTP over UDP: ``--provider``) and returns a :class:`LoadReport`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.loadgen.options import LoadOptions
from services.loadgen.report import CallResult, LoadReport
from services.loadgen.script import CallerScript
from services.loadgen.twilio_caller import TwilioCaller

if TYPE_CHECKING:
    from services.loadgen.runner import run_load

__all__ = ["CallResult", "CallerScript", "LoadOptions", "LoadReport", "TwilioCaller", "run_load"]


def __getattr__(name: str) -> Any:
    # The runner pulls in aiohttp, websockets and twilio; import it only when it is used, so
    # `callray --help` and the sans-I/O tests stay light.
    if name == "run_load":
        from services.loadgen.runner import run_load

        return run_load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
