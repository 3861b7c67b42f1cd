"""Real SIP peers for the issue-11 tests: SIPp and baresip as subprocesses on 127.0.0.1.

Neither peer was written here, so they check our SIP UAS, the local model's SIP front and our
RTP (RFC 3261/3264/3550/4733) from the outside. Contract:

- Everything talks to 127.0.0.1 only: every target is checked, and both peers bind loopback.
  The suite runs inside a loopback-only network namespace (``scripts/test.sh``), but nothing
  here depends on it.
- A peer that is not installed skips the test, except under ``CI=true`` (CI installs
  ``sip-tester`` and ``baresip-core`` via ``scripts/setup.sh``), where it fails.
- Each run gets a scratch directory (logs, the tone files, baresip's config and recordings)
  and free ports; each is bounded by a timeout, then SIGTERM (SIPp still writes its final
  statistics), then SIGKILL. Both peers run as asyncio subprocesses, so the system under test
  can serve them from the same event loop.
- ``Sipp`` runs a scenario from ``tests/fixtures/sipp/`` (their header comments say what each
  checks) and parses SIPp's statistics CSV and message log. SIPp cannot record what it hears:
  use ``Baresip``, which records the decoded audio it receives (``sndfile``) and is driven
  over its ``ctrl_tcp`` JSON interface (dial, RFC 4733 digits with ``sndcode``, events).
- ``send_raw`` and ``EDGE_CASES`` cover malformed input, easier as raw datagrams than in SIPp.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import wave
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from services.telephony.g711 import pcm16_to_ulaw
from tests.conftest import TIMEOUT_FACTOR

LOOPBACK = "127.0.0.1"
SIPP_SCENARIOS = Path(__file__).parent / "fixtures" / "sipp"
BARESIP_MODULES = Path("/usr/lib/baresip/modules")
Target = tuple[str, int]


def require(binary: str) -> str:
    """The path of ``binary``; skips the test without it, fails under CI=true."""
    path = shutil.which(binary)
    if path is None:
        package = {"sipp": "sip-tester", "baresip": "baresip-core"}.get(binary, binary)
        if os.environ.get("CI") == "true":
            pytest.fail(f"{binary} is missing: CI installs it (apt-get install {package})")
        pytest.skip(f"{binary} is missing: apt-get install {package}")
    return path


def require_raw_socket() -> None:
    """Skip unless raw IP sockets can be opened (root or CAP_NET_RAW): SIPp's play_dtmf and
    play_pcap_audio need them, and SIPp dies without."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP).close()
    except PermissionError:
        pytest.skip("SIPp's play_dtmf needs root or CAP_NET_RAW")


def _loopback(target: Target) -> Target:
    if target[0] != LOOPBACK:
        raise ValueError(f"SIP peers only talk to {LOOPBACK}, not {target[0]}")
    return target


def free_port(kind: int = socket.SOCK_DGRAM, count: int = 1) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 now (an even one when
    ``count`` > 1: SIPp's -mp uses port, port+1 (RTCP) and port+2, port+3 (video))."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind((LOOPBACK, 0))
            port: int = probe.getsockname()[1]
            base = port & ~1 if count > 1 else port
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, kind)
                held.append(s)
                s.bind((LOOPBACK, port))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports on {LOOPBACK}")


def tone_pcm16(hz: float = 440.0, seconds: float = 3.0, amplitude: float = 0.3) -> bytes:
    """A sine tone, 8 kHz mono signed 16-bit little-endian."""
    t = np.arange(round(8000 * seconds)) / 8000
    return (amplitude * 32767 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


def write_wav(path: Path, pcm16: bytes, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm16)
    return path


# --- SIPp -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SipMessage:
    """One message from SIPp's ``-trace_msg`` log, as SIPp sent or received it."""

    direction: Literal["sent", "received"]
    text: str

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    def starts(self, prefix: str) -> bool:
        return self.first_line.startswith(prefix)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive; no compact forms)."""
        head = self.text.split("\n\n", 1)[0]
        match = re.search(rf"^{re.escape(name)}[ \t]*:[ \t]*(.*)$", head, re.I | re.M)
        return match.group(1).strip() if match else None

    @property
    def body(self) -> str:
        return self.text.split("\n\n", 1)[1] if "\n\n" in self.text else ""


_LOG_ENTRY = re.compile(
    r"^-{20,} [\d-]+ [\d:.]+\n\S+ message (sent|received)[^\n]*\n\n(.*?)(?=^-{20,} |\Z)",
    re.M | re.S,
)


def parse_message_log(text: str) -> list[SipMessage]:
    """SIPp's ``-trace_msg`` file: a dashed separator with a time, a "UDP message sent (N
    bytes):" line, a blank line, then the message (CRLFs written as they were on the wire)."""
    text = text.replace("\r\n", "\n")
    return [
        SipMessage("sent" if d == "sent" else "received", body.strip("\n") + "\n")
        for d, body in _LOG_ENTRY.findall(text)
    ]


@dataclasses.dataclass(frozen=True)
class SippResult:
    """How a SIPp run ended. ``returncode`` (``sipp -h``): 0 all calls succeeded, 1 at least
    one failed, 97 exit on internal command, 99 normal exit without calls processed, 255 (-1)
    fatal error, 254 (-2) fatal error binding a socket; negative: killed by that signal.
    ``successful``/``failed`` come from the final row of the ``-trace_stat`` CSV (cumulative
    counters), ``None`` if SIPp died before writing it; ``failures`` names the nonzero
    ``Failed*`` counters (e.g. ``FailedRegexpDoesntMatch`` when a scenario's check failed)."""

    returncode: int
    successful: int | None
    failed: int | None
    failures: dict[str, int]
    messages: list[SipMessage]
    errors: str
    stdout: str
    stderr: str
    timed_out: bool
    workdir: Path

    def received(self, start: str = "") -> list[SipMessage]:
        """What SIPp received, whose first line starts with ``start`` ("SIP/2.0 200", "REFER")."""
        return [m for m in self.messages if m.direction == "received" and m.starts(start)]

    def sent(self, start: str = "") -> list[SipMessage]:
        return [m for m in self.messages if m.direction == "sent" and m.starts(start)]

    def assert_ok(self, calls: int = 1) -> None:
        """Exactly ``calls`` calls succeeded and none failed; else an error that shows why."""
        if (self.returncode, self.successful, self.failed) != (0, calls, 0):
            raise AssertionError(
                f"sipp: exit {self.returncode}, {self.successful} ok, {self.failed} failed "
                f"(want {calls} ok){' after the timeout' if self.timed_out else ''}; "
                f"failures {self.failures}\nerrors:\n{self.errors[-3000:]}\n"
                f"stderr:\n{self.stderr[-2000:]}\nlog in {self.workdir}"
            )


def _scenario_defaults(path: Path) -> dict[str, str]:
    """``-key NAME DEFAULT`` lines of a scenario's header comment: the keys it needs."""
    head = path.read_text(encoding="latin-1").split("-->", 1)[0]
    return dict(re.findall(r"^\s*-key (\w+) (\S+)", head, re.M))


@dataclasses.dataclass
class Sipp:
    """One SIPp run: ``scenario`` is a file in ``tests/fixtures/sipp/`` (or a path), or the
    name of a scenario built into SIPp (``uas``, ``uac``). A scenario that starts with
    ``<recv>`` makes SIPp a UAS: ``start()`` it without a target, point the code under test
    at ``sip_port``. ``keys`` are ``-key`` values (``[name]`` in the XML; the header comment's
    ``-key`` lines give defaults, and ``[rtp_port]`` defaults to ``media_port``); ``variables``
    are ``-set`` ones. ``duration_ms`` is ``-d``, the length of each bare ``<pause/>``
    (default: the tone's length plus 200 ms, for scenarios that pause while it plays)."""

    scenario: str
    workdir: Path
    calls: int = 1
    rate: float = 10.0
    limit: int | None = None
    duration_ms: int | None = None
    keys: Mapping[str, str] = dataclasses.field(default_factory=dict)
    variables: Mapping[str, str] = dataclasses.field(default_factory=dict)
    service: str = "service"
    auth: tuple[str, str] | None = None  # -au/-ap, for [authentication]
    rtp_echo: bool = False
    recv_timeout_ms: int | None = None  # -recv_timeout; None: the whole run's timeout
    timeout: float = 15.0
    extra_args: Sequence[str] = ()
    tone: bytes | None = None  # μ-law written to ./tone.ulaw; None → 3 s of 440 Hz
    sip_port: int = dataclasses.field(default_factory=free_port)
    media_port: int = dataclasses.field(default_factory=lambda: free_port(count=4))

    def _tone(self) -> bytes:
        return self.tone or pcm16_to_ulaw(tone_pcm16())

    def command(self, target: Target | None = None) -> list[str]:
        if self.scenario.endswith(".xml"):
            path = SIPP_SCENARIOS / self.scenario  # an absolute path stays as it is
            keys = {"rtp_port": str(self.media_port), **_scenario_defaults(path), **self.keys}
            what = ["-sf", str(path)]
        else:
            keys, what = dict(self.keys), ["-sn", self.scenario]
        argv = [require("sipp"), *([f"{_loopback(target)[0]}:{target[1]}"] if target else [])]
        argv += [*what, "-i", LOOPBACK, "-p", str(self.sip_port), "-bind_local"]
        argv += ["-mi", LOOPBACK, "-mp", str(self.media_port), "-s", self.service]
        duration = self.duration_ms or len(self._tone()) // 8 + 200  # μ-law: 8 bytes a ms
        argv += ["-m", str(self.calls), "-r", f"{self.rate:g}", "-d", str(duration)]
        recv_timeout = self.recv_timeout_ms or round(self.timeout * TIMEOUT_FACTOR * 1000)
        argv += ["-nostdin", "-recv_timeout", str(recv_timeout)]
        argv += ["-trace_stat", "-stf", "stats.csv", "-fd", "3600"]
        argv += ["-trace_msg", "-message_file", "messages.log"]
        argv += ["-trace_err", "-error_file", "errors.log"]
        argv += ["-l", str(self.limit)] if self.limit is not None else []
        if self.auth:
            argv += ["-au", self.auth[0], "-ap", self.auth[1]]
            if target:  # sign the Request-URI our scenarios use, not SIPp's default host:port
                argv += ["-auth_uri", f"{self.service}@{target[0]}:{target[1]}"]
        argv += ["-rtp_echo"] if self.rtp_echo else []
        for name, value in keys.items():
            argv += ["-key", name, value]
        for name, value in self.variables.items():
            argv += ["-set", name, value]
        return [*argv, *self.extra_args]

    async def start(self, target: Target | None = None) -> SippProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tone.ulaw").write_bytes(self._tone())
        argv = self.command(target)
        (self.workdir / "command.txt").write_text(" ".join(argv) + "\n")
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        await _until_bound(self.sip_port, process)
        return SippProcess(self, process)

    async def run(self, target: Target | None = None) -> SippResult:
        """Start SIPp and wait until it exits (or ``timeout``)."""
        return await (await self.start(target)).wait()


class SippProcess:
    """A running SIPp. ``async with`` stops it on exit if it is still running."""

    def __init__(self, sipp: Sipp, process: asyncio.subprocess.Process) -> None:
        self.sipp = sipp
        self.process = process
        self.sip_port = sipp.sip_port
        self.media_port = sipp.media_port
        self.target: Target = (LOOPBACK, sipp.sip_port)
        self._output = asyncio.ensure_future(process.communicate())
        self._result: SippResult | None = None

    async def wait(self, within: float | None = None) -> SippResult:
        """Wait for SIPp to finish (``-m`` calls done); after ``within`` s (default: the run's
        ``timeout``), SIGTERM then SIGKILL."""
        limit = (self.sipp.timeout if within is None else within) * TIMEOUT_FACTOR
        done, _ = await asyncio.wait({self._output}, timeout=limit)
        return await self._finish(timed_out=not done)

    async def stop(self) -> SippResult:
        """End SIPp now (a UAS has no natural end); SIGTERM lets it write its statistics."""
        return await self._finish(timed_out=False)

    async def _finish(self, *, timed_out: bool) -> SippResult:
        if self._result is None:
            if self.process.returncode is None:
                self.process.send_signal(signal.SIGTERM)
                done, _ = await asyncio.wait({self._output}, timeout=3)
                if not done:
                    self.process.kill()
            stdout, stderr = await self._output
            self._result = _sipp_result(self.sipp.workdir, self.process, stdout, stderr, timed_out)
        return self._result

    async def __aenter__(self) -> SippProcess:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _until_bound(port: int, process: asyncio.subprocess.Process) -> None:
    """Wait until SIPp has bound its SIP port: a UAS must not miss the first datagram."""
    for _ in range(500):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                return
        if process.returncode is not None:
            return  # it died: wait() reports why
        await asyncio.sleep(0.01)


def _sipp_result(
    workdir: Path, process: asyncio.subprocess.Process, out: bytes, err: bytes, timed_out: bool
) -> SippResult:
    def read(name: str) -> str:
        path = workdir / name
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    rows = list(csv.reader(read("stats.csv").splitlines(), delimiter=";"))
    final = dict(zip(rows[0], rows[-1], strict=False)) if len(rows) >= 2 else {}

    def counter(name: str) -> int | None:
        value = final.get(f"{name}(C)", "")
        return int(value) if value.isdigit() else None

    failures = {
        name[:-3]: int(value)
        for name, value in final.items()
        if name.startswith("Failed") and name.endswith("(C)") and value.isdigit() and int(value)
    }
    assert process.returncode is not None
    return SippResult(
        returncode=process.returncode,
        successful=counter("SuccessfulCall"),
        failed=counter("FailedCall"),
        failures=failures,
        messages=parse_message_log(read("messages.log")),
        errors=read("errors.log"),
        stdout=out.decode(errors="replace"),
        stderr=err.decode(errors="replace"),
        timed_out=timed_out,
        workdir=workdir,
    )


# --- baresip ----------------------------------------------------------------------------

_BARESIP_CONFIG = """\
poll_method		poll
sip_listen		127.0.0.1:{sip_port}
net_interface		127.0.0.1
audio_player		aubridge,nil
audio_source		aufile,{audio}
audio_alert		aubridge,nil
audio_srate		8000
audio_channels		1
rtp_ports		{rtp_low}-{rtp_high}
module_path		{modules}
module			g711.so
module			aufile.so
module			aubridge.so
module			sndfile.so
snd_path		{recordings}
module			ctrl_tcp.so
ctrl_tcp_listen		127.0.0.1:{ctrl_port}
module_app		account.so
module_app		menu.so
"""


@dataclasses.dataclass(frozen=True)
class BaresipResult:
    """A finished baresip run. ``received``: the decoded audio it heard, one 8 kHz WAV per
    call (``sndfile``'s ``dump-*-dec.wav``), oldest first; ``sent``: what it encoded
    (``*-enc.wav``). ``events``: its ``ctrl_tcp`` events (``type``: CALL_RINGING,
    CALL_ESTABLISHED, TRANSFER, CALL_DTMF_START, CALL_CLOSED with ``param`` the reason...).
    ``log``: stdout and stderr, with the SIP trace (``-s``)."""

    returncode: int | None
    events: list[dict[str, Any]]
    received: list[Path]
    sent: list[Path]
    log: str
    timed_out: bool
    workdir: Path

    def types(self) -> list[str]:
        return [str(event.get("type")) for event in self.events]


@dataclasses.dataclass
class Baresip:
    """A headless baresip 1.0.0 UAC on 127.0.0.1, driven over ``ctrl_tcp``. It plays ``audio``
    (an 8 kHz mono 16-bit WAV; None: ``tone_seconds`` of 440 Hz) and records what it hears.
    It hangs up by itself when the WAV ends ("audio error (0,end of file)"), so the WAV's
    length is the call's unless the far end hangs up first or ``hangup_after`` s pass. Once
    the first call is up, it sends ``digits`` as RFC 4733 events after ``digits_after`` s,
    one ``sndcode`` (press and release: ~200 ms of events, the end sent 3 times) each
    ``digit_gap`` s. It follows a REFER on its own (a new call to the Refer-To URI, NOTIFYs
    100 Trying then the outcome). ``net_interface 127.0.0.1`` keeps its SDP ``c=`` on
    loopback (without it, baresip advertises the host's first interface address)."""

    workdir: Path
    audio: Path | None = None
    tone_seconds: float = 3.0
    digits: str = ""
    digits_after: float = 0.3
    digit_gap: float = 0.3
    hangup_after: float | None = None
    timeout: float = 15.0
    sip_port: int = dataclasses.field(default_factory=free_port)
    ctrl_port: int = dataclasses.field(default_factory=lambda: free_port(socket.SOCK_STREAM))
    rtp_port: int = dataclasses.field(default_factory=lambda: free_port(count=20))

    def _configure(self) -> Path:
        config, recordings = self.workdir / "config", self.workdir / "recordings"
        config.mkdir(parents=True, exist_ok=True)
        recordings.mkdir(exist_ok=True)
        tone = tone_pcm16(seconds=self.tone_seconds)
        audio = self.audio or write_wav(self.workdir / "tone.wav", tone)
        settings: dict[str, object] = {"audio": audio, "recordings": recordings}
        settings |= {"modules": BARESIP_MODULES}
        settings |= {"sip_port": self.sip_port, "ctrl_port": self.ctrl_port}
        settings |= {"rtp_low": self.rtp_port, "rtp_high": self.rtp_port + 19}
        (config / "config").write_text(_BARESIP_CONFIG.format(**settings))
        (config / "accounts").write_text("<sip:tester@127.0.0.1>;regint=0;audio_codecs=PCMU\n")
        (config / "contacts").write_text("")
        return config

    async def call(self, uri: str) -> BaresipResult:
        """Dial ``uri`` (sip:...@127.0.0.1:port); return when every call baresip made has
        closed, or at the timeout (then it is killed)."""
        if not re.fullmatch(r"sips?:[^@]+@127\.0\.0\.1(:\d+)?(;.*)?", uri):
            raise ValueError(f"baresip only dials 127.0.0.1 here, not {uri}")
        argv = [require("baresip"), "-f", str(self._configure()), "-s"]  # -s: SIP trace
        argv += ["-t", str(round(self.timeout * TIMEOUT_FACTOR) + 5)]  # its own last resort
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output = asyncio.ensure_future(process.communicate())
        events: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(self.timeout * TIMEOUT_FACTOR):
                await self._drive(uri, events)
        except TimeoutError:
            timed_out = True
        else:
            timed_out = False
        finally:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(output), 3)
            if process.returncode is None:
                process.kill()
        log = (await output)[0].decode(errors="replace")
        dumps = sorted((self.workdir / "recordings").glob("dump-*.wav"))
        received = [p for p in dumps if p.name.endswith("-dec.wav")]
        sent = [p for p in dumps if p.name.endswith("-enc.wav")]
        return BaresipResult(
            process.returncode, events, received, sent, log, timed_out, self.workdir
        )

    async def _drive(self, uri: str, events: list[dict[str, Any]]) -> None:
        ctrl = await _Ctrl.connect(self.ctrl_port)
        live: set[str] = set()
        later: list[asyncio.Task[None]] = []
        closing = False  # every call closed: wait 0.3 s more for a REFER's new call
        try:
            await ctrl.send("dial", uri)
            while True:
                try:
                    async with asyncio.timeout(0.3 if closing else None):
                        event = await ctrl.event()
                except TimeoutError:
                    break
                events.append(event)
                kind, call = event.get("type"), str(event.get("id"))
                if kind in ("CALL_RINGING", "CALL_PROGRESS", "CALL_ESTABLISHED"):
                    live.add(call)
                    closing = False
                if kind == "CALL_ESTABLISHED" and not later:
                    codes = [("sndcode", digit) for digit in self.digits]
                    later.append(ctrl.after(self.digits_after, codes, self.digit_gap))
                    if self.hangup_after is not None:
                        later.append(ctrl.after(self.hangup_after, [("hangup", None)]))
                if kind == "CALL_CLOSED":
                    live.discard(call)
                    closing = not live
            await ctrl.send("quit")
        finally:
            for task in later:
                task.cancel()
            ctrl.writer.close()


class _Ctrl:
    """baresip's ctrl_tcp: JSON in netstrings ("<length>:<json>,") both ways; commands are
    menu commands (dial, sndcode, hangup, quit), events carry ``"event": true``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> _Ctrl:
        for _ in range(100):  # baresip takes a moment to listen
            with contextlib.suppress(OSError):
                return cls(*await asyncio.open_connection(LOOPBACK, port))
            await asyncio.sleep(0.05)
        raise RuntimeError(f"baresip's ctrl_tcp never listened on {LOOPBACK}:{port}")

    async def send(self, command: str, params: str | None = None) -> None:
        message = {"command": command, "token": command}
        if params is not None:
            message["params"] = params
        data = json.dumps(message).encode()
        self.writer.write(b"%d:%s," % (len(data), data))
        await self.writer.drain()

    async def event(self) -> dict[str, Any]:
        while True:
            length = int((await self.reader.readuntil(b":"))[:-1])
            message: dict[str, Any] = json.loads((await self.reader.readexactly(length + 1))[:-1])
            if message.get("event"):
                return message  # else a command's response

    def after(
        self, delay: float, commands: Sequence[tuple[str, str | None]], gap: float = 0
    ) -> asyncio.Task[None]:
        async def run() -> None:
            await asyncio.sleep(delay)
            for command, params in commands:
                await self.send(command, params)
                await asyncio.sleep(gap)

        return asyncio.create_task(run())


# --- what a peer heard ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WavStats:
    """``rms`` and ``peak`` in 16-bit units over the whole file; ``voiced_seconds``: 20 ms
    frames louder than ``silence_dbfs``; ``dominant_hz``: the FFT peak over those frames."""

    seconds: float
    rms: float
    peak: int
    voiced_seconds: float
    dominant_hz: float


def analyse_wav(path: Path, *, silence_dbfs: float = -40.0) -> WavStats:
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * wav.getsampwidth()}-bit, not 16-bit")
        rate, channels = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")[::channels]
    signal_ = samples.astype(np.float64)
    frame = rate // 50
    frames = signal_[: len(signal_) // frame * frame].reshape(-1, frame)
    frame_rms = np.sqrt((frames**2).mean(axis=1)) if len(frames) else np.zeros(0)
    loud = frames[frame_rms > 32768 * 10 ** (silence_dbfs / 20)]
    dominant = 0.0
    if len(loud):
        voiced = loud.reshape(-1)
        spectrum = np.abs(np.fft.rfft(voiced * np.hanning(len(voiced))))
        dominant = float(np.argmax(spectrum[1:]) + 1) * rate / len(voiced)
    return WavStats(
        seconds=len(samples) / rate,
        rms=float(np.sqrt((signal_**2).mean())) if len(signal_) else 0.0,
        peak=int(np.abs(signal_).max()) if len(signal_) else 0,
        voiced_seconds=len(loud) * frame / rate,
        dominant_hz=dominant,
    )
