"""``SessionHostActor``: a Ray actor hosting hundreds of calls (a :class:`CallHost`).

It owns this process's Redis connection, the shared :class:`RedisToolRunner` (tool results for
every call here arrive on one stream, ``callray:tool-results:<host id>``), the call-event
writer and the calls' conversation records (so another host can resume a call moved off this
one), and registers itself with the router when started.
"""

from __future__ import annotations

import logging
import os

from actors import _ray
from services.agents.registry import load_agents
from services.config import MediaSettings, ModelSettings, load_webrtc_settings
from services.media.channel_server import MediaChannelServer
from services.media.vocabulary import CallSpec
from services.observability import logs
from services.redis_client import connect as connect_redis
from services.runtime.events import BufferedEventSink
from services.runtime.host import CallHost
from services.toolbus.call_events import CallEventLog
from services.toolbus.conversations import RedisConversations
from services.toolbus.runner import RedisToolRunner

logger = logging.getLogger(__name__)


class SessionHostActor:
    def __init__(
        self,
        host_id: str,
        *,
        redis_url: str,
        model: ModelSettings,
        model_url: str,
        agent_spec: str | None,
        capacity: int,
        tool_timeout_s: float = 30.0,
        events_maxlen: int = 100_000,
        media: MediaSettings | None = None,
        max_call_s: float = 0.0,
    ) -> None:
        media = media or MediaSettings()
        logs.configure_from_env()  # this actor's process: its entry point
        if model.transport == "webrtc":
            from services.webrtc import ice

            # Calls to the model gather ICE where the browser ingress does (process-wide hook).
            ice.install(load_webrtc_settings(os.environ).ice_addresses)
        self.host_id = host_id
        self._capacity = capacity
        self._redis = connect_redis(redis_url)
        self._runner = RedisToolRunner(self._redis, host_id=host_id, default_timeout=tool_timeout_s)
        self._events = BufferedEventSink(CallEventLog(self._redis, maxlen=events_maxlen))
        self._router: _ray.RouterClient | None = None
        self.host = CallHost(
            host_id,
            model=model,
            model_url=model_url,
            agents=load_agents(agent_spec),
            tool_runner=self._runner,
            events=self._events,
            capacity=capacity,
            on_call_end=self._call_ended,
            append_ms=media.append_ms,
            conversations=RedisConversations(self._redis),
            max_call_s=max_call_s,
        )
        # Media to and from ingresses streams over this socket, not actor calls.
        self._channel = MediaChannelServer(
            self.host, bind=_ray.node_ip(), interval_s=media.channel_interval_ms / 1000
        )

    async def start(self, register: bool = True) -> int:
        """Start the tool-result reader and event writer, then join the router."""
        await self._runner.start()
        self._events.start()
        await self._channel.start()
        if register:
            self._router = _ray.RouterClient(_ray.get_router())
            await self._router.register_host(
                self.host_id, _ray.current_actor(), self._capacity, _ray.own_pid()
            )
        return _ray.own_pid()

    def _call_ended(self, call_id: str, reason: str) -> None:
        if self._router is not None:
            self._router.release(call_id, reason, self.host_id)

    def ping(self) -> int:
        return len(self.host.calls)

    def channel(self) -> tuple[str, str]:
        """URL and key of this host's media channel (handed out only over Ray)."""
        return self._channel.url, self._channel.key

    async def open_call(self, spec: CallSpec) -> float:
        return await self.host.open_call(spec)

    def say_goodbye_all(self, reason: str) -> int:
        """The node is stopping: every call here ends with a spoken goodbye."""
        return self.host.say_goodbye_all(reason)

    def hand_off_all(self, reason: str) -> int:
        """A drain past its deadline: every call here moves to another host."""
        return self.host.hand_off_all(reason)

    async def close_call(self, call_id: str, reason: str) -> bool:
        """End a call here (the router moved it to another host)."""
        return await self.host.close_call(call_id, reason)

    async def shutdown(self) -> None:
        """End every call here and flush events (a drained host has none left)."""
        await self.host.close_all("host_shutdown")
        await self._channel.stop()
        await self._events.close()
        await self._runner.stop()
        await self._redis.aclose()

    def pid(self) -> int:
        return _ray.own_pid()
