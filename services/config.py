"""Settings, read once from the environment and flags into frozen objects.

Nothing below an entry point reads ``os.environ``: entry points call :func:`load_settings` and pass
the result (or the part a component needs) down. Every object here pickles, so it can be handed to
Ray actors as a constructor argument. Secrets never appear in ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from services.errors import ConfigError

OPENAI_REALTIME_URL = "wss://api.openai.com/v1/realtime"
# The Agents SDKs (JS 0.17, Python 0.22) default to this model; `gpt-realtime` is announced for
# shutdown on 2027-01-20 (reference/realtime-protocol.md, section 0).
DEFAULT_MODEL = "gpt-realtime-2.1"


@dataclass(frozen=True)
class Secret:
    """A string that never shows itself in ``repr``/``str`` (logs, tracebacks, pickled reprs)."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('****')" if self.value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self.value)


@dataclass(frozen=True)
class ModelSettings:
    """Where the Realtime model lives and how to reach it.

    ``url`` is the base endpoint (``ws(s)://host/v1/realtime``); ``None`` means "no model
    configured": the embedded defaults then start our local model server.
    """

    api_key: Secret
    url: str | None
    model: str
    # A call whose model connection drops reconnects and replays its conversation for this
    # long (seconds) before it ends with ``model_unavailable``.
    reconnect_s: float = 10.0
    # How sessions talk to the model: "websocket", or "webrtc" (OpenAIRealtimeWebRTC: Opus on
    # tracks, events on a data channel; services/realtime/transports/webrtc.py).
    transport: str = "websocket"

    @property
    def uses_local_model(self) -> bool:
        return self.url is None


@dataclass(frozen=True)
class LocalModelSettings:
    host: str = "127.0.0.1"
    port: int = 8765
    mode: str = "scripted"
    scenario: str | None = None
    # How much faster than real time the server streams output audio (the real API is faster
    # than real time too; a bridge must not assume otherwise).
    speed: float = 4.0
    # Output audio is sent in deltas of this many milliseconds of audio.
    chunk_ms: int = 50
    # Client messages above this size get an `error` event (the socket itself accepts 4x more, so
    # an oversize message is answered rather than closing the connection).
    max_message_bytes: int = 16 * 1024 * 1024
    # When set, clients must send `Authorization: Bearer <api_key>`; when empty, any bearer works.
    api_key: Secret = Secret("")
    # A fault for tests and fault runs: close each connection with 1011 after this many client
    # events (0: never).
    drop_after_events: int = 0
    # Where its WebRTC calls (POST /v1/realtime/calls) gather ICE candidates; empty: aioice's
    # choice (every interface address but loopback). CALLRAY_WEBRTC_ICE_ADDRESSES.
    ice_addresses: tuple[str, ...] = ()
    # SIP calls (services/localmodel/sip_calls.py): where each new one is announced with a
    # signed realtime.call.incoming webhook (None: nowhere), the Standard Webhooks secret it is
    # signed with (whsec_...), and how long a call waits for its accept before it is refused.
    webhook_url: str | None = None
    webhook_secret: Secret = Secret("")
    sip_accept_timeout_s: float = 10.0


@dataclass(frozen=True)
class MediaSettings:
    """How many messages a call's audio costs on each leg (bench/README.md, "Messages per
    call-second"): every message is a wake-up and a system call on both ends, so fewer, larger
    ones are the main lever on CPU per call. Defaults chosen by measurement (bench/calls.py)."""

    # Caller audio gathered per input_audio_buffer.append to the model (a multiple of 20 ms).
    append_ms: int = 20
    # Most model audio per media message to the caller.
    chunk_ms: int = 100
    # A playback mark after at least this much audio (and at an item's end): each is a message
    # to the caller and its echo back. A barge-in truncates at the last acknowledged mark, so
    # this is also the truncation's resolution.
    mark_ms: int = 100
    # Media-channel messages between an ingress and a host leave at most this often per
    # direction; what arrives meanwhile rides along.
    channel_interval_ms: float = 2.0
    # An ingress that cannot reach a host's media channel for this long takes the host for
    # lost and moves its live calls to other hosts (the caller hears this much silence, plus
    # the new session's start).
    host_lost_s: float = 1.0
    # Never dead air: a call whose session is gone and not back on another host within this
    # long hears the unavailable announcement and ends.
    no_session_s: float = 2.0
    # That announcement: a mono 16-bit WAV (8 kHz is enough for a phone); "" is the built-in one.
    unavailable_announcement: str = ""


@dataclass(frozen=True)
class RuntimeSettings:
    """The distributed runtime: Redis, Ray, session hosts, tool executors, admission caps."""

    redis_url: str | None = None  # None: `callray up` starts an embedded redis-server
    ray_address: str | None = None  # None: a local Ray started by `callray up`
    agent: str | None = None  # package.module:attr; None: the demo agent
    hosts: int = 2
    host_capacity: int = 500
    cluster_capacity: int = 1000
    executors: int = 2
    executor_concurrency: int = 64
    tool_timeout_s: float = 30.0
    events_maxlen: int = 100_000
    metrics_port: int = 9464
    data_dir: str = ".callray"
    health_interval_s: float = 1.0
    media: MediaSettings = field(default_factory=MediaSettings)
    # On SIGTERM calls in progress may finish for this long; then each ends with a spoken
    # goodbye (services/up.py).
    drain_timeout_s: float = 30.0
    # A call this long ends with the agent's goodbye (outcome max_duration); 0: no limit. With
    # it, a drain's grace period can be sized to the longest call.
    max_call_s: float = 0.0


@dataclass(frozen=True)
class WebRTCSettings:
    """Browser calls (services/gateway/webrtc_ingress.py; ICE: services/webrtc/ice.py)."""

    # When set, POST /webrtc/token needs "Authorization: Bearer <this>" (your backend asks for
    # a call token for a signed-in user); empty: open, for development on one machine.
    token_secret: Secret = Secret("")
    # Addresses aioice gathers host candidates on; empty: aioice's own choice (every interface
    # address but loopback). Tests on loopback use 127.0.0.1.
    ice_addresses: tuple[str, ...] = ()
    # The address peers reach us at when it is not ours (1:1 NAT, a Kubernetes node's address):
    # host candidates in our answers carry it instead.
    advertise_address: str | None = None
    # STUN/TURN URLs; none by default (aiortc's own default is a public STUN server).
    ice_servers: tuple[str, ...] = ()
    # UDP ports (first, last) the ingress's ICE host candidates bind; None: any free port.
    port_range: tuple[int, int] | None = None
    # Offered candidates on private addresses are tried (False: only public ones).
    allow_private_candidates: bool = True
    # Offers from one address beyond this rate (per second, with a burst of twice it) get 429.
    offers_per_source_s: float = 5.0
    # ICE and DTLS must complete within connect_s; a caller whose audio stops for silence_s
    # (a closed tab, a dead network) has hung up.
    connect_s: float = 10.0
    silence_s: float = 3.0
    # Ephemeral keys minted for browsers calling the model directly live this long (10 to 7200).
    ek_ttl_s: float = 60.0


@dataclass(frozen=True)
class SipSettings:
    """Our SIP UAS and its RTP (services/gateway/sip_ingress.py)."""

    # UDP port for SIP; None: no SIP ingress (the dataclass default, so a gateway built in a
    # test does not take 5060). CALLRAY_SIP_PORT: 5060 unless "off".
    port: int | None = None
    host: str = "127.0.0.1"  # CALLRAY_SIP_HOST; RTP binds here too
    # The address peers reach us at when it is not ``host`` (1:1 NAT, a node's address): our
    # Contact and SDP c= carry it.
    advertise_address: str | None = None
    rtp_ports: tuple[int, int] = (20000, 29999)  # CALLRAY_RTP_PORTS, even ports used
    # Sources (CIDRs) taken without authentication; empty: every source, unless users are set.
    allow_sources: tuple[str, ...] = ()
    # Digest credentials ("user:password,..."): a source outside allow_sources is challenged
    # (407); the realm names them.
    auth_users: Secret = Secret("")
    auth_realm: str = "callray"
    # Challenge order (RFC 8760 §2.4: the preferred first). Peers that read only the first
    # challenge and know only MD5 (sipp 3.6, older phones) need "MD5,SHA-256" or "MD5".
    auth_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    # New INVITEs a second from one address (burst: twice): a flood guard, set above what one
    # trunk delivers (capacity is the router's admission, not this).
    invites_per_source_s: float = 50.0
    rtp_timeout_s: float = 30.0  # no RTP this long (not on hold): the caller is gone
    # Register with a PBX as an extension (RFC 3261 §10), so it routes calls to us:
    # CALLRAY_SIP_REGISTRAR=host:port, _USER, _PASSWORD, _EXPIRES.
    registrar: tuple[str, int] | None = None
    register_user: str = ""
    register_password: Secret = Secret("")
    register_expires: int = 3600
    # Where a transfer to a named queue goes ("billing" -> "sip:billing@pbx.example.com");
    # a queue not named here goes to sip:<queue>@<the address the call came from>.
    transfer_targets: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class GatewaySettings:
    """The front door: one port for Twilio's webhook and media streams, health and metrics."""

    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = None  # https://voice.example.com, as Twilio reaches us
    twilio_auth_token: Secret = Secret("")  # when set, X-Twilio-Signature is required
    stream_secret: Secret = Secret("")  # signs single-use stream tokens; random when empty
    stream_token_ttl_s: float = 60.0
    # Call control over Twilio's REST API (hang up, transfer); the base URL is for stand-ins.
    twilio_account_sid: str = ""
    twilio_api_base_url: str | None = None
    # Before a peer has authenticated (services/gateway/front_door.py): a media stream must send
    # its start frame within stream_start_s; at most max_pending_streams such streams at once,
    # max_pending_per_source of them from one address; a webhook's body must arrive whole
    # within request_timeout_s.
    stream_start_s: float = 5.0
    max_pending_streams: int = 1000
    max_pending_per_source: int = 100
    request_timeout_s: float = 10.0
    webrtc: WebRTCSettings = field(default_factory=WebRTCSettings)
    # Verifies the webhooks of OpenAI's SIP connector (POST /openai/sip/webhook, Standard
    # Webhooks, whsec_...); empty: that route is not served.
    openai_webhook_secret: Secret = Secret("")
    sip: SipSettings = field(default_factory=SipSettings)


@dataclass(frozen=True)
class Settings:
    model: ModelSettings
    local_model: LocalModelSettings
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)


def _check_ws_url(name: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ConfigError(f"{name} must be a ws:// or wss:// URL with a host, got {url!r}")
    return url


def load_model_settings(env: Mapping[str, str]) -> ModelSettings:
    """Resolve the model endpoint: ``CALLRAY_MODEL_URL``, else OpenAI's when a key is set."""
    key = env.get("OPENAI_API_KEY", "").strip()
    url = env.get("CALLRAY_MODEL_URL", "").strip() or None
    if url is not None:
        url = _check_ws_url("CALLRAY_MODEL_URL", url)
    elif key:
        url = OPENAI_REALTIME_URL
    model = env.get("CALLRAY_MODEL", "").strip() or DEFAULT_MODEL
    reconnect_s = _float(env, "CALLRAY_MODEL_RECONNECT_S", 10.0)
    transport = _choice(env, "CALLRAY_MODEL_TRANSPORT", "websocket", ("websocket", "webrtc"))
    return ModelSettings(
        api_key=Secret(key), url=url, model=model, reconnect_s=reconnect_s, transport=transport
    )


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, "").strip() or default
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _frame_ms(env: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    value = _int(env, name, default, 20)
    if value % 20 or value > maximum:
        raise ConfigError(f"{name} must be a multiple of 20 ms up to {maximum}, got {value}")
    return value


def load_media_settings(env: Mapping[str, str]) -> MediaSettings:
    d = MediaSettings()
    raw = env.get("CALLRAY_CHANNEL_INTERVAL_MS", "").strip()
    try:
        interval = float(raw) if raw else d.channel_interval_ms
    except ValueError:
        raise ConfigError(f"CALLRAY_CHANNEL_INTERVAL_MS must be a number, got {raw!r}") from None
    if not 0 <= interval <= 100:
        raise ConfigError(f"CALLRAY_CHANNEL_INTERVAL_MS must be 0 to 100, got {interval}")
    return MediaSettings(
        append_ms=_frame_ms(env, "CALLRAY_APPEND_MS", d.append_ms, 200),
        chunk_ms=_frame_ms(env, "CALLRAY_MEDIA_CHUNK_MS", d.chunk_ms, 1000),
        mark_ms=_frame_ms(env, "CALLRAY_MARK_MS", d.mark_ms, 1000),
        channel_interval_ms=interval,
        host_lost_s=_float(env, "CALLRAY_HOST_LOST_S", d.host_lost_s),
        no_session_s=_float(env, "CALLRAY_NO_SESSION_S", d.no_session_s),
        unavailable_announcement=env.get("CALLRAY_UNAVAILABLE_ANNOUNCEMENT", "").strip(),
    )


def load_runtime_settings(env: Mapping[str, str]) -> RuntimeSettings:
    d = RuntimeSettings()
    redis_url = env.get("REDIS_URL", "").strip() or None
    if redis_url is not None and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"REDIS_URL must be a redis://, rediss:// or unix:// URL, got {redis_url!r}"
        )
    return RuntimeSettings(
        redis_url=redis_url,
        ray_address=env.get("RAY_ADDRESS", "").strip() or None,
        agent=env.get("CALLRAY_AGENT", "").strip() or None,
        hosts=_int(env, "CALLRAY_HOSTS", d.hosts, 1),
        host_capacity=_int(env, "CALLRAY_HOST_CAPACITY", d.host_capacity, 1),
        cluster_capacity=_int(env, "CALLRAY_CLUSTER_CAPACITY", d.cluster_capacity, 1),
        executors=_int(env, "CALLRAY_EXECUTORS", d.executors, 1),
        executor_concurrency=_int(env, "CALLRAY_EXECUTOR_CONCURRENCY", d.executor_concurrency, 1),
        tool_timeout_s=_float(env, "CALLRAY_TOOL_TIMEOUT", d.tool_timeout_s),
        events_maxlen=_int(env, "CALLRAY_EVENTS_MAXLEN", d.events_maxlen, 1),
        metrics_port=_int(env, "CALLRAY_METRICS_PORT", d.metrics_port),
        data_dir=env.get("CALLRAY_DATA_DIR", "").strip() or d.data_dir,
        media=load_media_settings(env),
        drain_timeout_s=_float(env, "CALLRAY_DRAIN_TIMEOUT_S", d.drain_timeout_s),
        max_call_s=_float(env, "CALLRAY_MAX_CALL_SECONDS", d.max_call_s),
    )


def load_gateway_settings(env: Mapping[str, str]) -> GatewaySettings:
    d = GatewaySettings()
    public = env.get("CALLRAY_PUBLIC_URL", "").strip().rstrip("/") or None
    if public is not None and urlsplit(public).scheme not in ("http", "https"):
        raise ConfigError(f"CALLRAY_PUBLIC_URL must be an http(s) URL, got {public!r}")
    return GatewaySettings(
        host=env.get("CALLRAY_HOST", "").strip() or d.host,
        port=_int(env, "CALLRAY_PORT", d.port),
        public_url=public,
        twilio_auth_token=Secret(env.get("TWILIO_AUTH_TOKEN", "").strip()),
        stream_secret=Secret(env.get("CALLRAY_STREAM_SECRET", "").strip()),
        twilio_account_sid=env.get("TWILIO_ACCOUNT_SID", "").strip(),
        twilio_api_base_url=env.get("TWILIO_API_BASE_URL", "").strip() or None,
        stream_start_s=_float(env, "CALLRAY_STREAM_START_S", d.stream_start_s),
        max_pending_streams=_int(env, "CALLRAY_MAX_PENDING_STREAMS", d.max_pending_streams, 1),
        max_pending_per_source=_int(
            env, "CALLRAY_MAX_PENDING_PER_SOURCE", d.max_pending_per_source, 1
        ),
        request_timeout_s=_float(env, "CALLRAY_REQUEST_TIMEOUT_S", d.request_timeout_s),
        webrtc=load_webrtc_settings(env),
        openai_webhook_secret=webhook_secret(env.get("OPENAI_WEBHOOK_SECRET", "").strip()),
        sip=load_sip_settings(env),
    )


def load_sip_settings(env: Mapping[str, str]) -> SipSettings:
    d = SipSettings()
    raw = env.get("CALLRAY_SIP_PORT", "").strip().lower()
    port: int | None = None if raw == "off" else _int(env, "CALLRAY_SIP_PORT", 5060, 0)
    advertise = env.get("CALLRAY_SIP_ADVERTISE_ADDRESS", "").strip() or None
    sources = _list(env, "CALLRAY_SIP_ALLOW_SOURCES")
    for value in sources:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ConfigError(f"CALLRAY_SIP_ALLOW_SOURCES holds networks, got {value!r}") from None
    users = env.get("CALLRAY_SIP_AUTH_USERS", "").strip()
    for pair in filter(None, (p.strip() for p in users.split(","))):
        if ":" not in pair or not pair.split(":", 1)[0]:
            raise ConfigError("CALLRAY_SIP_AUTH_USERS is user:password pairs, comma-separated")
    return SipSettings(
        port=port,
        host=env.get("CALLRAY_SIP_HOST", "").strip() or d.host,
        advertise_address=advertise,
        rtp_ports=_port_range(env, "CALLRAY_RTP_PORTS") or d.rtp_ports,
        allow_sources=sources,
        auth_users=Secret(users),
        auth_realm=env.get("CALLRAY_SIP_REALM", "").strip() or d.auth_realm,
        auth_algorithms=_algorithms(env, "CALLRAY_SIP_AUTH_ALGORITHMS") or d.auth_algorithms,
        invites_per_source_s=_float(
            env, "CALLRAY_SIP_INVITES_PER_SOURCE_S", d.invites_per_source_s
        ),
        rtp_timeout_s=_float(env, "CALLRAY_SIP_RTP_TIMEOUT_S", d.rtp_timeout_s),
        transfer_targets=_transfer_targets(env, "CALLRAY_SIP_TRANSFER_TARGETS"),
        registrar=_host_port(env, "CALLRAY_SIP_REGISTRAR"),
        register_user=env.get("CALLRAY_SIP_REGISTER_USER", "").strip(),
        register_password=Secret(env.get("CALLRAY_SIP_REGISTER_PASSWORD", "").strip()),
        register_expires=_int(env, "CALLRAY_SIP_REGISTER_EXPIRES", d.register_expires, 60),
    )


def _algorithms(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    chosen = tuple(a.upper() for a in _list(env, name))
    for algorithm in chosen:
        if algorithm not in ("SHA-256", "MD5"):
            raise ConfigError(f"{name} holds SHA-256 and/or MD5, got {algorithm!r}")
    return chosen


def _host_port(env: Mapping[str, str], name: str) -> tuple[str, int] | None:
    """``host:port`` (an IP address; the port defaults to 5060); empty: None."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    host, _, port = raw.rpartition(":") if raw.count(":") == 1 else (raw, "", "")
    try:
        ipaddress.ip_address(host)
        number = int(port) if port else 5060
    except ValueError:
        raise ConfigError(
            f"{name} must be an IP address with an optional :port, got {raw!r}"
        ) from None
    if not 0 < number < 65536:
        raise ConfigError(f"{name}: port out of range in {raw!r}")
    return host, number


def _transfer_targets(env: Mapping[str, str], name: str) -> tuple[tuple[str, str], ...]:
    """``queue=uri,...`` with sip:/sips:/tel: URIs."""
    out: list[tuple[str, str]] = []
    for pair in _list(env, name):
        queue, _, uri = pair.partition("=")
        if not queue.strip() or uri.strip().split(":", 1)[0] not in ("sip", "sips", "tel"):
            raise ConfigError(f"{name} is queue=sip:...|tel:... pairs, comma-separated")
        out.append((queue.strip().lower(), uri.strip()))
    return tuple(out)


def webhook_secret(value: str, name: str = "OPENAI_WEBHOOK_SECRET") -> Secret:
    """A Standard Webhooks secret: ``whsec_`` and base64 (or, as the openai package also takes,
    any other non-empty text, used as is); a malformed one fails the start, not every webhook."""
    if value.startswith("whsec_"):
        try:
            key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            key = b""
        if not key:
            raise ConfigError(f"{name} must be whsec_ followed by base64")
    return Secret(value)


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())


def load_webrtc_settings(env: Mapping[str, str]) -> WebRTCSettings:
    d = WebRTCSettings()
    addresses = _list(env, "CALLRAY_WEBRTC_ICE_ADDRESSES")
    advertise = env.get("CALLRAY_WEBRTC_ADVERTISE_ADDRESS", "").strip() or None
    for name, value in [("CALLRAY_WEBRTC_ICE_ADDRESSES", a) for a in addresses] + (
        [("CALLRAY_WEBRTC_ADVERTISE_ADDRESS", advertise)] if advertise else []
    ):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ConfigError(f"{name} must hold IP addresses, got {value!r}") from None
    servers = _list(env, "CALLRAY_WEBRTC_ICE_SERVERS")
    for url in servers:
        if not url.startswith(("stun:", "turn:", "turns:")):
            raise ConfigError(f"CALLRAY_WEBRTC_ICE_SERVERS holds stun:/turn: URLs, got {url!r}")
    private = env.get("CALLRAY_WEBRTC_ALLOW_PRIVATE", "").strip().lower()
    return WebRTCSettings(
        port_range=_port_range(env, "CALLRAY_WEBRTC_PORT_RANGE"),
        token_secret=Secret(env.get("CALLRAY_WEBRTC_TOKEN_SECRET", "").strip()),
        ice_addresses=addresses,
        advertise_address=advertise,
        ice_servers=servers,
        allow_private_candidates=private not in ("0", "false", "no"),
        offers_per_source_s=_float(
            env, "CALLRAY_WEBRTC_OFFERS_PER_SOURCE_S", d.offers_per_source_s
        ),
        connect_s=_float(env, "CALLRAY_WEBRTC_CONNECT_S", d.connect_s),
        silence_s=_float(env, "CALLRAY_WEBRTC_SILENCE_S", d.silence_s),
        ek_ttl_s=_ek_ttl(env),
    )


def _port_range(env: Mapping[str, str], name: str) -> tuple[int, int] | None:
    """``first-last``, both in 1024..65535; empty: None."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    first, sep, last = raw.partition("-")
    try:
        bounds = (int(first), int(last))
    except ValueError:
        bounds = (0, 0)
    if not sep or not 1024 <= bounds[0] <= bounds[1] <= 65535:
        raise ConfigError(
            f"{name} must be FIRST-LAST with 1024 <= FIRST <= LAST <= 65535, got {raw!r}"
        )
    return bounds


def _ek_ttl(env: Mapping[str, str]) -> float:
    ttl = _float(env, "CALLRAY_EK_TTL_S", WebRTCSettings().ek_ttl_s)
    if not 10 <= ttl <= 7200:
        raise ConfigError(f"CALLRAY_EK_TTL_S must be 10 to 7200 seconds, got {ttl:g}")
    return ttl


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every setting once. ``env`` defaults to the process environment."""
    source = os.environ if env is None else env
    return Settings(
        model=load_model_settings(source),
        local_model=LocalModelSettings(
            mode=_choice(source, "CALLRAY_MODEL_MODE", "scripted", ("scripted", "echo")),
            drop_after_events=_int(source, "CALLRAY_MODEL_DROP_AFTER", 0),
            ice_addresses=load_webrtc_settings(source).ice_addresses,
        ),
        runtime=load_runtime_settings(source),
        gateway=load_gateway_settings(source),
    )
