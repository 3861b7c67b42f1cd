"""Runs our local model server in a child process for the embedded defaults.

A separate process keeps the model's CPU (speech synthesis, pacing) off the driver, as a remote
model would be. The child dies with us (``PR_SET_PDEATHSIG``), so it is never left behind.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

from services.embedded.process import die_with_parent
from services.errors import ConfigError

_URL = re.compile(rb"(ws://[0-9.]+:\d+/v1/realtime)")


class ModelProcess:
    def __init__(
        self,
        *,
        mode: str = "scripted",
        scenario: str | None = None,
        log: Path,
        drop_after_events: int = 0,
    ) -> None:
        self._args = [sys.executable, "-m", "services.cli", "model", "--port", "0", "--mode", mode]
        if scenario:
            self._args += ["--scenario", scenario]
        if drop_after_events:
            self._args += ["--drop-after", str(drop_after_events)]  # a fault, for fault runs
        self._log_path = log
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None
        self.url = ""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, limit_s: float = 30.0) -> str:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self._log = self._log_path.open("wb")
        self._proc = subprocess.Popen(
            self._args,
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent(),
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                break
            match = _URL.search(line)
            if match:
                self.url = match.group(1).decode()
                return self.url
        self.stop()
        raise ConfigError(f"the local model server did not start; see {self._log_path}")

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if self._log is not None:
            self._log.close()
