"""A real ``rsyslogd`` (Debian packages rsyslog and rsyslog-gnutls) as a test's syslog collector.

Started with its own configuration file in a temporary folder (``-n -f CONF -i PIDFILE``):
``imudp`` or ``imtcp`` with TLS (gtls, client certificates checked) on a free loopback
port, ``omfile`` to a file in that folder; no system log is read or written. Each
message is written as one line of tab-separated fields (PRI, APP-NAME, PROCID, MSGID,
HOSTNAME, STRUCTURED-DATA, then MSG JSON-escaped). Locally a missing rsyslogd skips the test; under CI
(``CI=true``) it fails it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


from tests.conftest import free_port
from tests.tools import missing_tool


def rsyslogd() -> str:
    path = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    if os.access(path, os.X_OK):
        return path
    message = "rsyslogd is not installed (Debian packages rsyslog and rsyslog-gnutls)"
    missing_tool(message)


@dataclass(frozen=True)
class Received:
    pri: int
    app_name: str
    procid: str
    msgid: str
    hostname: str
    structured_data: str
    msg: str


TEMPLATE = 'template(name="fields" type="string" string="%pri%\\t%app-name%\\t%procid%\\t%msgid%\\t%hostname%\\t%structured-data%\\t%msg:::json%\\n")'


class Rsyslog:
    """``rsyslogd`` listening on 127.0.0.1:``port`` (UDP, or TLS when ``pki`` is given)."""

    def __init__(self, folder: Path, pki=None, port: int | None = None):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or (free_port() if pki else _free_udp_port())
        self.output = folder / "received.log"
        self.conf = folder / "rsyslog.conf"
        self.pidfile = folder / "rsyslogd.pid"
        self.pki = pki
        self.process: subprocess.Popen | None = None
        lines = [f'global(workDirectory="{folder}" maxMessageSize="64k"']
        if pki:
            lines[0] += (f' defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile="{pki.ca_cert}"'
                         f' defaultNetstreamDriverCertFile="{pki.server_cert}"'
                         f' defaultNetstreamDriverKeyFile="{pki.server_key}"')
        lines[0] += ")"
        if pki:
            lines += ['module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" '
                      'streamDriver.authMode="x509/certvalid")',
                      f'input(type="imtcp" address="127.0.0.1" port="{self.port}" ruleset="audit")']
        else:
            lines += ['module(load="imudp")',
                      f'input(type="imudp" address="127.0.0.1" port="{self.port}" ruleset="audit")']
        lines += [TEMPLATE,
                  f'ruleset(name="audit") {{ action(type="omfile" file="{self.output}" template="fields" '
                  f'flushOnTXEnd="on" asyncWriting="off") }}']
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 15) -> "Rsyslog":
        log = open(self.folder / "rsyslogd.stderr", "ab")
        self.process = subprocess.Popen([rsyslogd(), "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                                        stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # ready when its port is taken
            if self.process.poll() is not None:
                raise AssertionError(f"rsyslogd exited {self.process.returncode}: {self.stderr()}")
            if self._listening():
                return self
            time.sleep(0.05)
        raise AssertionError(f"rsyslogd did not listen on port {self.port} within {timeout}s: {self.stderr()}")

    def _listening(self) -> bool:
        if self.pki:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return True
            except OSError:
                return False
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind(("127.0.0.1", self.port))
            return False  # still free: not bound yet
        except OSError:
            return True
        finally:
            probe.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def stderr(self) -> str:
        path = self.folder / "rsyslogd.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def received(self) -> list[Received]:
        if not self.output.exists():
            return []
        found = []
        for line in self.output.read_text(encoding="utf-8").splitlines():
            pri, app, procid, msgid, host, sd, msg = line.split("\t", 6)
            found.append(Received(int(pri), app, procid, msgid, host, sd, json.loads(f'"{msg}"')))
        return found

    def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        """The messages written, once there are at least ``count`` (AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received()
            if len(got) >= count:
                return got
            time.sleep(0.1)
        raise AssertionError(f"rsyslogd wrote {len(self.received())} messages, not {count}, within {timeout}s: "
                             f"{self.stderr()}")


def _free_udp_port() -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port
