"""The settings of one load test, checked once, frozen and passed down (STYLE.md, practice 6)."""

from __future__ import annotations

import dataclasses
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from services.config import Secret
from services.errors import UserError

__all__ = ["MAX_CALLS", "MAX_DURATION_S", "LoadOptions", "Provider"]

Provider = Literal["twilio", "sip"]
#: SIP calls go to this host only: the load generator binds and talks to loopback.
SIP_HOST: Final = "127.0.0.1"

#: Bounds that keep a typo from turning a load test into a flood or a day-long run.
MAX_CALLS: Final = 10_000
MAX_DURATION_S: Final = 3600.0
#: Barge-ins start at least this long after the opening utterance and end this long before
#: the call does, so the model has time to answer first and the clear time to arrive.
BARGE_IN_MARGIN_S: Final = 0.2


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """One load test.

    ``calls`` callers start spread evenly over ``ramp_s`` (at most ``concurrency`` at a time;
    ``None`` means all), each streams for ``duration_s`` and then drains for up to ``drain_s``.
    A caller speaks (the ``wav`` file, else a tone) for its first ``opening_ms`` and during a
    barge-in, and is silent otherwise.
    ``barge_in_rate`` of them (chosen evenly, not at random, so counts are exact) interrupt
    the model once at a random time. ``echo`` says the model server echoes the caller's audio
    (the local model's echo mode), which enables per-frame latency and loss accounting.
    ``auth_token``, when set, signs requests like Twilio (``X-Twilio-Signature``) over
    ``public_url`` (default ``base_url``), for an ingress that checks signatures.

    ``provider`` is how calls arrive: ``twilio`` (a voice webhook at ``base_url``, then a media
    stream) or ``sip`` (an INVITE to the UAS at ``target``, ``127.0.0.1:port``, then RTP).
    """

    base_url: str = "http://127.0.0.1:8080"
    calls: int = 10
    ramp_s: float = 1.0
    duration_s: float = 10.0
    barge_in_rate: float = 0.0
    wav: str | None = None
    concurrency: int | None = None
    echo: bool = True
    drain_s: float = 1.0
    # 0: callers listen first (to a greeting). Speaking first is closer to some call flows,
    # but against callray in echo mode it is a barge-in of its own: echoes stop until the VAD
    # hears silence, leaving that stretch out of the latency numbers.
    opening_ms: int = 0
    barge_in_ms: int = 600
    seed: int = 0
    progress: bool | None = None  # None: when stderr is a terminal
    voice_path: str = "/twilio/voice"
    rebase_stream_url: bool = True
    timeout_s: float = 10.0
    auth_token: Secret = dataclasses.field(default_factory=lambda: Secret(""))
    public_url: str | None = None
    provider: Provider = "twilio"
    target: str = f"{SIP_HOST}:5060"
    sip_user: str = "agent"  # the Request-URI's user part

    def __post_init__(self) -> None:
        if self.provider not in ("twilio", "sip"):
            raise UserError(f"provider must be twilio or sip, got {self.provider!r}")
        if self.provider == "sip":
            self.target_address()  # raises on a bad target
        for name, url in (("base_url", self.base_url), ("public_url", self.public_url)):
            if url is not None:
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.netloc:
                    raise UserError(f"{name} must be an absolute http(s) URL, got {url!r}")
        if not 1 <= self.calls <= MAX_CALLS:
            raise UserError(f"calls must be between 1 and {MAX_CALLS}, got {self.calls}")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise UserError(f"duration must be in (0, {MAX_DURATION_S}] s, got {self.duration_s}")
        if self.ramp_s < 0 or self.drain_s < 0 or not self.timeout_s > 0:
            raise UserError("ramp and drain must not be negative, and the timeout is positive")
        if not 0.0 <= self.barge_in_rate <= 1.0:
            raise UserError(f"barge-in rate must be in [0, 1], got {self.barge_in_rate}")
        if self.concurrency is not None and self.concurrency < 1:
            raise UserError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.opening_ms < 0 or self.barge_in_ms < 20:
            raise UserError("opening must not be negative and a barge-in lasts 20 ms or more")
        if not self.voice_path.startswith("/"):
            raise UserError(f"voice path must start with '/', got {self.voice_path!r}")
        if self.barge_in_rate > 0:
            low, high = self.barge_in_window()
            if high < low:
                raise UserError(
                    f"a {self.duration_s} s call is too short for a {self.barge_in_ms} ms "
                    f"barge-in after a {self.opening_ms} ms opening"
                )

    def target_address(self) -> tuple[str, int]:
        """``target`` as (host, port); only 127.0.0.1 is allowed."""
        host, _, port = self.target.rpartition(":")
        if host != SIP_HOST or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"target must be {SIP_HOST}:<port>, got {self.target!r}")
        return host, int(port)

    def barge_in_window(self) -> tuple[float, float]:
        """The earliest and latest time (s after the stream starts) a barge-in may be planned."""
        low = self.opening_ms / 1000 + BARGE_IN_MARGIN_S
        high = self.duration_s - self.barge_in_ms / 1000 - BARGE_IN_MARGIN_S
        return low, high

    def barges_in(self, index: int) -> bool:
        """Whether caller ``index`` interrupts: every 1/rate-th caller, so exactly
        ``floor(calls * rate)`` of them do."""
        rate = self.barge_in_rate
        return int((index + 1) * rate + 1e-9) > int(index * rate + 1e-9)

    def describe(self) -> dict[str, Any]:
        """The options for the report (no secret; whether requests were signed)."""
        data = dataclasses.asdict(self)
        data["auth_token"] = bool(self.auth_token)
        return data
