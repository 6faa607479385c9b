"""Support for end-to-end tests: `gatekeeper serve` as a real process, DCMTK tools.

pynetdicom installs Python scripts named findscu/storescu/echoscu that may come first
on PATH; :func:`dcmtk` finds DCMTK's own binaries. Locally a missing DCMTK skips the
test; under CI (``CI=true``) it fails it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.conftest import write_settings
from tests.tools import missing_tool


def dcmtk(tool: str) -> str:
    """Path of a DCMTK command-line tool, or skip (fail under CI) when missing."""
    candidates = [f"/usr/bin/{tool}", f"/usr/local/bin/{tool}", shutil.which(tool)]
    for path in candidates:
        if not path or not os.access(path, os.X_OK):
            continue
        out = subprocess.run([path, "--version"], capture_output=True, text=True)
        if "dcmtk" in (out.stdout + out.stderr).lower():
            return path
    message = f"DCMTK's {tool} is not installed (Debian package dcmtk)"
    missing_tool(message)


def gatekeeper_command() -> list[str]:
    """The installed console script when there is one, else the module."""
    script = Path(sys.executable).with_name("gatekeeper")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


def echo_ok(port: int, calling: str = "E2E", timeout: float = 2) -> bool:
    """True when a C-ECHO to GATEKEEPER on 127.0.0.1:``port`` succeeds (also used by bench/)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


class Gateway:
    """A gateway folder with its settings; `serve` runs as a child process."""

    def __init__(self, folder: Path, extra_settings: str = "", env: dict | None = None, **settings):
        self.folder = folder
        self.settings = write_settings(folder, extra=extra_settings, **settings)  # unknown_aets=, server=
        self.port = int(next(line.split("=")[1] for line in self.settings.read_text().splitlines()
                             if line.startswith("port = ")))
        self.env = {**os.environ, "GATEKEEPER_CONFIG": str(self.settings), **(env or {})}
        self.env.pop("GATEKEEPER_DATABASE_URL", None)
        self.process: subprocess.Popen | None = None
        self.log_path = folder / "serve.log"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(gatekeeper_command() + list(args), env=self.env, capture_output=True,
                                text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"gatekeeper {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        return result

    def start(self, timeout: float = 30) -> "Gateway":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(gatekeeper_command() + ["serve"], env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited {self.process.returncode}:\n{self.log()}")
            if echo_ok(self.port):
                return self
            time.sleep(0.1)
        raise AssertionError(f"serve did not answer C-ECHO within {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"serve did not stop within {timeout}s of signal {sig}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def logged(self, text: str, timeout: float = 10) -> bool:
        """True once ``text`` is in the log (the server may log just after its peer saw the answer)."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


@pytest.fixture
def gateway(tmp_path):
    gw = Gateway(tmp_path)
    yield gw
    gw.stop()
