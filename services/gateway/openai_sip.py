"""``POST /openai/sip/webhook``: calls that OpenAI's SIP connector terminates (issue 11, path a).

The carrier's SIP and RTP end at the model (reference/telephony.md §4.1); the model tells us of
each new call with a signed ``realtime.call.incoming`` webhook, and a session of ours accepts
it, attaches to it by ``call_id`` and runs it. No media passes through callray.

The webhook, as the connector sends it (reference/realtime-protocol.md §6.2, §6.3):

* the raw body is verified with the ``openai`` package's ``webhooks.unwrap`` (Standard Webhooks:
  ``webhook-id``/``-timestamp``/``-signature``, HMAC-SHA256, 300 s tolerance) against
  ``OPENAI_WEBHOOK_SECRET``. Forged, stale, unsigned or malformed → ``400``, counted and logged
  (rate-limited per source) without the body;
* other event types → ``200``, ignored and counted;
* duplicates (the sender retries with the same ``webhook-id``; a call may also be announced
  twice) are dropped cluster-wide: the webhook id **and** the call id are each claimed once in
  the ledger the stream tokens use (Redis ``SET NX PX``, :mod:`.token_ledger`). A ledger that
  cannot answer fails closed: ``503``, and the sender tries again;
* the answer is ``200`` at once; the call is opened after it, in a task: the router places a
  session (``transport="openai-sip"``, ``attach``), which accepts the call at the model with
  the agent's config and attaches (:mod:`services.realtime.transports.sip`). Refused (busy, or
  the gateway is draining) → ``calls.reject(call_id, status_code=486)``; the caller gone before
  the accept → nothing more to do (the session reported ``call.ended caller_gone``).

The call's ``From`` and ``To`` become the call's ``caller`` metadata (``from``/``to``), bounded
and stripped of control characters; they are untrusted, passed to the agent, never logged.

The session's hang-up and transfer come back here as commands on the call's
:class:`SipLeg`: ``calls.hangup``, and ``calls.refer(target_uri)`` (a failed refer hangs up).
The caller's BYE closes the model's sideband, which ends the session ``caller_hangup``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

import openai
from aiohttp import web

from services.config import Secret
from services.errors import ProviderError, TransportError
from services.gateway.direct_calls import ModelAccess
from services.gateway.ingress_core import Busy, IngressCore, Refused
from services.gateway.refusals import Refusals
from services.gateway.token_ledger import TokenLedger
from services.http_body import BodyTooLarge, read_bounded
from services.media.vocabulary import AudioDone, CallSpec, Hangup, PlayAudio, PlaybackCut, Transfer
from services.observability import metrics
from services.realtime.transports.sip import (
    OPENAI_SIP,
    CallGone,
    SipCallControl,
    TransferRefused,
)

__all__ = ["WEBHOOK_PATH", "OpenAISip", "SipLeg", "caller_metadata"]

logger = logging.getLogger(__name__)

WEBHOOK_PATH: Final = "/openai/sip/webhook"
INCOMING: Final = "realtime.call.incoming"
# A webhook is a few KB; the INVITE's headers are most of it.
MAX_BODY: Final = 64 * 1024
# The connector wants its answer within a second or so: the ledger's claims get this long.
ANSWER_BUDGET_S: Final = 0.8
# How long a webhook id and a call id stay claimed: well past the sender's retries (1+2+4 s
# here; OpenAI's policy is not published, reference §12) and any call's pending window.
DEDUP_TTL_S: Final = 3600.0
# The ledger's keys (services/gateway/token_ledger.py) for this path.
LEDGER_PREFIX: Final = "openai-sip:"
BUSY: Final = 486  # Busy Here (RFC 3261 §21.4.24): a trunk tries its next route
# Ids go into URL paths and Redis keys: a bounded, plain alphabet.
_ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
MAX_HEADER_CHARS: Final = 256
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
# RFC 3261 §7.3.3 compact forms.
_CALLER_HEADERS: Final = {"from": "from", "f": "from", "to": "to", "t": "to"}


def caller_metadata(sip_headers: Any) -> dict[str, str]:
    """``from`` and ``to`` of the webhook's ``sip_headers`` (the first of each), bounded and
    without control characters; anything malformed is left out (it is only metadata)."""
    caller: dict[str, str] = {}
    if not isinstance(sip_headers, list):
        return caller
    for header in sip_headers[:256]:
        if not isinstance(header, dict):
            continue
        name, value = header.get("name"), header.get("value")
        if not isinstance(name, str) or not isinstance(value, str):
            continue
        key = _CALLER_HEADERS.get(name.strip().lower())
        if key is not None and key not in caller:
            caller[key] = _CONTROL.sub("", value)[:MAX_HEADER_CHARS].strip()
    return caller


class SipLeg:
    """A SIP call's side at the ingress: no media; call control through the model's REST."""

    def __init__(self, call_id: str, on_end: Callable[[SipLeg], None]) -> None:
        self.call_id = call_id
        self._on_end = on_end
        self.ended: str | None = None
        self.refer_target: str | None = None

    def play(self, command: PlayAudio) -> None:
        pass  # the model plays to the caller itself, on the SIP leg

    def audio_done(self, command: AudioDone) -> None:
        pass

    def interrupt(self) -> PlaybackCut:
        return PlaybackCut(())  # the model truncates its own playback

    def control(self, command: Hangup | Transfer) -> None:
        if isinstance(command, Transfer):
            self.refer_target = command.target
            self.end("transferred")
        else:
            self.end(command.reason)

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self._on_end(self)


class OpenAISip:
    def __init__(
        self,
        core: IngressCore,
        ledger: TokenLedger,
        access: ModelAccess,
        secret: Secret,
        *,
        draining: Callable[[], bool] = lambda: False,
        body_timeout_s: float = 10.0,
        calls: SipCallControl | None = None,
    ) -> None:
        self._core = core
        self._ledger = ledger
        self._secret = secret
        self._draining = draining
        self._body_timeout_s = body_timeout_s
        self.calls = calls or SipCallControl(access.rest_base, access.api_key)
        self._refuse = Refusals(logger, what="an OpenAI SIP webhook", prefix="openai_sip")
        self._tasks: set[asyncio.Task[None]] = set()
        self.legs: dict[str, SipLeg] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_post(WEBHOOK_PATH, self.webhook)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
        await self.calls.close()

    # ----- the webhook ---------------------------------------------------------------------------

    async def webhook(self, request: web.Request) -> web.Response:
        try:
            async with asyncio.timeout(self._body_timeout_s):
                body = await read_bounded(request, MAX_BODY)
        except TimeoutError:
            return self._refuse(request, 408, "slow", "the body did not arrive in time")
        except BodyTooLarge:
            return self._refuse(request, 413, "too_large", "the body is too large")
        try:
            # Raises on a bad or missing signature, a stale or future timestamp, a body that is
            # not JSON; the body is never logged.
            event = self.calls.client.webhooks.unwrap(
                body, {k.lower(): v for k, v in request.headers.items()}, secret=self._secret.value
            )
            payload = json.loads(body)
        except (openai.InvalidWebhookSignatureError, ValueError, TypeError) as exc:
            reason = (
                "bad_signature"
                if isinstance(exc, openai.InvalidWebhookSignatureError)
                else "bad_body"
            )
            return self._refuse(request, 400, reason, f"webhook refused: {_why(exc)}")
        if getattr(event, "type", None) != INCOMING:
            metrics.openai_sip_webhook("ignored")
            return web.Response(status=200)
        webhook_id = request.headers.get("webhook-id", "")
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict) or not _ID.fullmatch(webhook_id):
            return self._refuse(request, 400, "bad_body", "webhook refused: no data")
        call_id = data.get("call_id")
        if not isinstance(call_id, str) or not _ID.fullmatch(call_id):
            return self._refuse(request, 400, "bad_body", "webhook refused: no usable call_id")
        try:
            async with asyncio.timeout(ANSWER_BUDGET_S):
                first = await self._claim("webhook:" + webhook_id) and await self._claim(
                    "call:" + call_id
                )
        except (TransportError, TimeoutError) as exc:
            # Fail closed, as for stream tokens: the sender tries again later.
            logger.error("an OpenAI SIP webhook could not be deduplicated: %s", _why(exc))
            metrics.openai_sip_webhook("unavailable")
            return web.json_response(
                {"error": "try again"}, status=503, headers={"Retry-After": "1"}
            )
        if not first:
            metrics.openai_sip_webhook("duplicate")
            return web.Response(status=200)
        metrics.openai_sip_webhook("taken")
        self._spawn(self._take(call_id, caller_metadata(data.get("sip_headers"))))
        return web.Response(status=200)

    async def _claim(self, key: str) -> bool:
        expires_ms = int((time.time() + DEDUP_TTL_S) * 1000)
        return await self._ledger.claim(LEDGER_PREFIX + key, expires_ms)

    # ----- the call ------------------------------------------------------------------------------

    async def _take(self, call_id: str, caller: dict[str, str]) -> None:
        """Open the call through the router; the session placed accepts it at the model."""
        if self._draining():
            await self._reject(call_id, "draining")
            return
        leg = SipLeg(call_id, self._ended)
        spec = CallSpec(
            call_id, transport=OPENAI_SIP, audio_format="audio/pcmu", caller=caller, attach=True
        )
        try:
            opened = await self._core.open(spec, leg)
        except Exception:
            logger.exception("could not open a SIP call", extra={"call_id": call_id})
            opened = Busy("router_unreachable")
        if isinstance(opened, Busy) and opened.reason == "caller_gone":
            return  # the session found the call gone at its accept, and reported it
        if isinstance(opened, Refused):
            # Only a call already open on this ingress is refused: it is live, leave it be.
            logger.warning("a SIP call was opened twice", extra={"call_id": call_id})
            return
        if isinstance(opened, Busy):
            await self._reject(call_id, opened.reason)
            return
        self.legs[call_id] = leg
        if leg.ended is not None:  # ended while it opened (a session gone at once)
            self._ended(leg)

    async def _reject(self, call_id: str, why: str) -> None:
        logger.info("refusing a SIP call (%s)", why, extra={"call_id": call_id})
        if not await self._control("reject", self.calls.reject(call_id, BUSY), call_id):
            # Not pending any more: it may have been accepted by a session that then failed
            # to attach. Nobody serves it: end it.
            await self._control("hangup", self.calls.hangup(call_id), call_id)

    def _ended(self, leg: SipLeg) -> None:
        """The session ended the call, or gave it away: release it, then hang it up at the
        model (unless a refer took it elsewhere)."""
        if self.legs.get(leg.call_id) is not leg:
            return  # not opened yet: _take finishes it
        del self.legs[leg.call_id]
        self._core.release(leg.call_id, leg)
        self._spawn(self._finish(leg))

    async def _finish(self, leg: SipLeg) -> None:
        call_id = leg.call_id
        if leg.refer_target is not None:
            referred = await self._control(
                "refer", self.calls.refer(call_id, leg.refer_target), call_id
            )
            if referred:
                return  # the caller is on their way to the target; the model ends its leg
        # Also after the sideband closed: that was the caller's BYE (404 here, "gone") or a
        # lost socket, and a call nobody controls any more must not go on at the model.
        await self._control("hangup", self.calls.hangup(call_id), call_id)

    async def _control(self, action: str, request: Coroutine[Any, Any, None], call_id: str) -> bool:
        """Run one REST call-control request; whether it succeeded (errors logged, counted)."""
        try:
            await request
        except CallGone:
            metrics.openai_sip_control(action, "gone")
            return False
        except (ProviderError, TransferRefused) as exc:
            metrics.openai_sip_control(action, "failed")
            logger.warning("SIP call %s failed: %s", action, exc, extra={"call_id": call_id})
            return False
        metrics.openai_sip_control(action, "ok")
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _why(exc: BaseException) -> str:
    """An exception's text for a log line or a 400 body: bounded, one line, never the body."""
    return _CONTROL.sub(" ", str(exc))[:120] or type(exc).__name__
