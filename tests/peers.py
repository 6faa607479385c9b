"""Real archive peers for the forwarding tests, each started on free loopback ports:

- :class:`Orthanc` (``/usr/sbin/Orthanc``, Debian package ``orthanc``) with a temporary JSON
  configuration, as the PACS (storage commitment SCP); its REST API counts what arrived;
- :class:`StoreSCP`: DCMTK's ``storescp`` writing each received dataset as it came (``+B``);
- :class:`SlowSCP`: a pynetdicom Storage SCP in the test process that takes its time per
  instance, to catch the gateway in the middle of forwarding.

Locally a missing tool skips the test; under CI (``CI=true``) it fails it, as tests/e2e.py's
:func:`tests.e2e.dcmtk` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from pynetdicom import AE, AllStoragePresentationContexts, evt

from tests.conftest import free_port
from tests.e2e import dcmtk
from tests.tools import missing_tool

ORTHANC = "/usr/sbin/Orthanc"


def orthanc_binary() -> str:
    if os.access(ORTHANC, os.X_OK):
        return ORTHANC
    message = "Orthanc is not installed (Debian package orthanc)"
    missing_tool(message)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` until it returns something true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Orthanc:
    """Orthanc as the PACS: AE ``ae_title`` on ``dicom_port``, REST on ``http_port`` (loopback)."""

    def __init__(self, folder: Path, *, ae_title: str = "PACS", dicom_port: int | None = None,
                 gateway_ae: str = "GATEKEEPER", gateway_port: int = 0) -> None:
        self.folder = folder
        self.ae_title = ae_title
        self.dicom_port = dicom_port or free_port()
        self.http_port = free_port()
        self.gateway = (gateway_ae, gateway_port)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "Orthanc":
        binary = orthanc_binary()
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "test-pacs", "DicomAet": self.ae_title, "DicomPort": self.dicom_port,
            "HttpPort": self.http_port, "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"), "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True, "Plugins": [], "HttpServerEnabled": True, "DicomServerEnabled": True,
            "DicomModalities": {"gatekeeper": {"AET": self.gateway[0], "Host": "127.0.0.1",
                                                "Port": self.gateway[1], "AllowStorageCommitment": True}},
            "StorageCommitmentReportsSize": 100, "OverwriteInstances": True, "ConcurrentJobs": 1, "SaveJobs": False,
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(config))
        self.log_path = self.folder / "orthanc.log"
        self.process = subprocess.Popen([binary, str(path)], stdout=open(self.log_path, "ab"),
                                        stderr=subprocess.STDOUT)
        wait_for(lambda: self._alive() and self._answers(), timeout, f"Orthanc on {self.http_port}")
        return self

    def _alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"Orthanc exited {self.process.returncode}: {self.log_path.read_text()[-3000:]}")
        return True

    def _answers(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as answer:
            body = answer.read()
        return json.loads(body) if answer.headers.get_content_type() == "application/json" else body

    def instances(self) -> list[str]:
        return self.get("/instances")

    def tags(self, orthanc_id: str) -> dict:
        return self.get(f"/instances/{orthanc_id}/simplified-tags")

    def by_sop(self) -> dict[str, str]:
        """SOP Instance UID -> Orthanc's instance ID."""
        return {self.tags(i)["SOPInstanceUID"]: i for i in self.instances()}

    def file(self, orthanc_id: str) -> bytes:
        return self.get(f"/instances/{orthanc_id}/file")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


class StoreSCP:
    """DCMTK's storescp as a second destination, writing files named by SOP Instance UID."""

    def __init__(self, folder: Path, *, ae_title: str = "STORESCP", port: int | None = None,
                 options: tuple[str, ...] = ()) -> None:
        self.folder = folder
        self.options = options
        self.ae_title = ae_title
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = folder.parent / f"{folder.name}.log"

    def start(self, timeout: float = 20) -> "StoreSCP":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [dcmtk("storescp"), "-v", *self.options, "-aet", self.ae_title, "+B", "-uf", "-od", str(self.folder),
             "--max-pdu", "131072", str(self.port)],
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: self._echo(), timeout, f"storescp on {self.port}")
        return self

    def _echo(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"storescp exited {self.process.returncode}: {self.log_path.read_text()[-2000:]}")
        ae = AE(ae_title="PROBE")
        ae.add_requested_context("1.2.840.10008.1.1")
        ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 2
        assoc = ae.associate("127.0.0.1", self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            return False
        assoc.release()
        return True

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def requests(self) -> int:
        """C-STORE requests storescp received (its verbose log has one line per request)."""
        return self.log_path.read_text(errors="replace").count("Received Store Request")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


class SlowSCP:
    """A Storage SCP in this process that sleeps ``delay`` s per instance and records what it got."""

    def __init__(self, *, ae_title: str = "SLOW", delay: float = 0.05) -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.delay = delay
        self.received: list[str] = []
        self._lock = threading.Lock()
        self._server = None

    def _on_store(self, event):
        time.sleep(self.delay)
        with self._lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def start(self) -> "SlowSCP":
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context("1.2.840.10008.1.1")
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
