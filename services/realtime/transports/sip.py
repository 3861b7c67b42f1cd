"""``OpenAIRealtimeSIP``: a session attached to a call that OpenAI's SIP connector terminates.

Path (a) of reference/telephony.md §4.1: the carrier's SIP/RTP ends at the model; we get a
``realtime.call.incoming`` webhook, accept the call over REST with the agent's initial config,
then attach a control ("sideband") WebSocket by ``?call_id=`` to run the tools and greet. No
audio passes through callray (reference/realtime-protocol.md §6.5). This module holds the
session side of it, as the seed (AJS ``openaiRealtimeSip.ts``) does:

* :class:`OpenAIRealtimeSIP`: the WebSocket transport, except that :meth:`~OpenAIRealtimeSIP.
  connect` requires a ``call_id`` and sends no ``session.update`` (the accept carried the
  config: one source of truth), and :meth:`~OpenAIRealtimeSIP.send_audio` raises
  :class:`~services.errors.UserError` (the audio is on the SIP leg);
* :func:`sip_accept_payload` / :func:`build_sip_initial_config`: the body of
  ``calls.accept``. AJS ``buildInitialConfig`` refuses ``turn_detection.threshold``,
  ``prefix_padding_ms`` and ``silence_duration_ms`` because "the Realtime Calls API rejects"
  them for SIP (§6.4, unconfirmed by an OpenAI doc); we drop them with a warning instead, so an
  agent tuned for Twilio still answers SIP calls;
* :func:`check_transfer_target`: a transfer becomes a SIP REFER whose ``Refer-To`` is the
  target, so only ``tel:`` and ``sip:`` URIs of bounded length without whitespace or control
  characters pass; anything else is a :class:`TransferRefused`, a
  :class:`~services.errors.ToolError` whose text the model is told;
* :class:`SipCallControl`: ``accept``/``reject``/``refer``/``hangup`` through the ``openai``
  package's ``client.realtime.calls`` on a configurable base URL (OpenAI's, or our local
  model's). A 404 (the caller hung up before we answered) is :class:`CallGone`; other failures
  are :class:`~services.errors.ProviderError` with ``retryable`` set.
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import openai
from openai.resources.realtime.calls import AsyncCalls

from services.config import Secret
from services.errors import ProviderError, ToolError, UserError
from services.realtime.agent import RealtimeAgent
from services.realtime.session_config import SIP_UNSUPPORTED_TURN_FIELDS, build_initial_config
from services.realtime.transports.websocket import OpenAIRealtimeWebSocket
from services.realtime.wire import JSON

__all__ = [
    "OPENAI_SIP",
    "CallGone",
    "OpenAIRealtimeSIP",
    "SipCallControl",
    "TransferRefused",
    "build_sip_initial_config",
    "check_transfer_target",
    "rest_base",
    "sip_accept_payload",
]

logger = logging.getLogger(__name__)

# CallSpec.transport of a call that OpenAI's SIP connector terminates.
OPENAI_SIP: Final = "openai-sip"
# Refer-To is a header: a URI, never a line break (RFC 3515 §2.1; RFC 3261 §25.1 for the URI).
MAX_TARGET_CHARS: Final = 256
_TARGET: Final = re.compile(r"(?:tel|sip):[^\s\x00-\x1f\x7f<>\"]+", re.IGNORECASE)
# Which keys of a session object ``calls.accept`` takes as keyword arguments; others go in
# ``extra_body`` (a newer field the installed package does not name yet).
_ACCEPT_KEYWORDS: Final = frozenset(
    name
    for name, p in inspect.signature(AsyncCalls.accept).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
    and name not in ("extra_headers", "extra_query", "extra_body", "timeout")
)


class TransferRefused(ToolError):
    """The transfer target cannot go in a SIP REFER; the message is shown to the model."""


class CallGone(ProviderError):
    """The model no longer has the call (``404 call_id_not_found``): the caller hung up, or the
    call was never ours to answer."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False, code="call_id_not_found")


# ----- the accept body ----------------------------------------------------------------------------


def sip_accept_payload(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a GA session object, ``type: realtime``) without the turn-detection fields
    the Calls API rejects for SIP; a copy, with a warning naming what was dropped."""
    payload = copy.deepcopy(dict(config))
    audio = payload.get("audio")
    audio_in = audio.get("input") if isinstance(audio, dict) else None
    detection = audio_in.get("turn_detection") if isinstance(audio_in, dict) else None
    if isinstance(detection, dict):
        dropped = [f for f in SIP_UNSUPPORTED_TURN_FIELDS if detection.pop(f, None) is not None]
        if dropped:
            logger.warning(
                "dropped turn_detection %s from a SIP accept (the Calls API rejects them)",
                ", ".join(dropped),
            )
    return payload


def build_sip_initial_config(
    agent: RealtimeAgent,
    options: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
    context: Any = None,
) -> dict[str, Any]:
    """The ``calls.accept`` body for ``agent``: :func:`build_initial_config` as any transport
    starts from, then :func:`sip_accept_payload` (the seed's ``buildInitialConfig``)."""
    return sip_accept_payload(build_initial_config(agent, options, model=model, context=context))


# ----- transfers ----------------------------------------------------------------------------------


def check_transfer_target(target: str) -> str:
    """``target`` if a SIP REFER can carry it (``tel:``/``sip:``), else :class:`TransferRefused`."""
    if len(target) > MAX_TARGET_CHARS or not _TARGET.fullmatch(target):
        raise TransferRefused(
            "This call can only be transferred to a phone number as a tel: URI (tel:+14155550123) "
            "or to a sip: address (sip:agent@example.com)."
        )
    return target


# ----- the transport ------------------------------------------------------------------------------


class OpenAIRealtimeSIP(OpenAIRealtimeWebSocket):
    """The sideband of a SIP call the model answered; see the module docstring."""

    async def connect(
        self,
        *,
        api_key: str | None = None,
        model: str | None = None,
        url: str | None = None,
        call_id: str | None = None,
        initial_session_config: JSON | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not call_id:
            raise UserError("a SIP session attaches to a call: connect() needs its call_id")
        # The accept carried the session config; attaching sends none (no model either: the
        # API attaches by call id alone, reference §1).
        await super().connect(api_key=api_key, url=url, call_id=call_id, headers=headers)

    def send_audio(self, audio: bytes, *, commit: bool = False) -> None:
        raise UserError("a SIP call's audio flows on its SIP leg, not on the sideband")


# ----- call control over REST ---------------------------------------------------------------------


def rest_base(model_url: str) -> str:
    """``ws(s)://host/v1/realtime`` (the model endpoint as configured) → ``http(s)://host/v1``."""
    parts = urlsplit(model_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/").removesuffix("/realtime")
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class SipCallControl:
    """``client.realtime.calls`` of the ``openai`` package, with our errors.

    One per process (it holds a connection pool). ``rest_base`` is ``https://api.openai.com/v1``
    or the local model's ``http://host:port/v1``; an empty key sends a placeholder (our local
    model without a key takes any).
    """

    def __init__(
        self, rest_base: str, api_key: Secret, *, timeout_s: float = 5.0, max_retries: int = 1
    ) -> None:
        self.rest_base = rest_base
        self._client = openai.AsyncOpenAI(
            api_key=api_key.value or "callray-no-key",
            base_url=rest_base,
            timeout=timeout_s,
            max_retries=max_retries,
            webhook_secret="",  # verified by the gateway with its own setting
        )

    @property
    def client(self) -> openai.AsyncOpenAI:
        return self._client

    async def close(self) -> None:
        await self._client.close()

    async def accept(self, call_id: str, config: Mapping[str, Any]) -> None:
        """Answer the call with ``config`` (the body of :func:`build_sip_initial_config`)."""
        known = {k: v for k, v in config.items() if k in _ACCEPT_KEYWORDS}
        extra = {k: v for k, v in config.items() if k not in _ACCEPT_KEYWORDS}
        await self._call("accept", call_id, **known, extra_body=extra or None)

    async def reject(self, call_id: str, status_code: int = 603) -> None:
        await self._call("reject", call_id, status_code=status_code)

    async def refer(self, call_id: str, target_uri: str) -> None:
        await self._call("refer", call_id, target_uri=check_transfer_target(target_uri))

    async def hangup(self, call_id: str) -> None:
        await self._call("hangup", call_id)

    async def _call(self, action: str, call_id: str, **kwargs: Any) -> None:
        method = getattr(self._client.realtime.calls, action)
        try:
            await method(call_id, **kwargs)
        except openai.NotFoundError as exc:
            raise CallGone(f"{action}: the model has no call {call_id}") from exc
        except openai.APIStatusError as exc:
            raise ProviderError(
                f"{action} of call {call_id} refused: {exc.status_code} {_message(exc)}",
                retryable=exc.status_code >= 500 or exc.status_code == 429,
                code=str(exc.code) if exc.code else None,
            ) from exc
        except openai.APIError as exc:  # no answer: connection refused, timeout
            raise ProviderError(
                f"{action} of call {call_id} failed: {type(exc).__name__}", retryable=True
            ) from exc


def _message(exc: openai.APIStatusError) -> str:
    """The error's own message, bounded (it is the model's text, not the caller's)."""
    return str(getattr(exc, "message", "") or "")[:200]
