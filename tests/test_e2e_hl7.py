"""End to end: `gatekeeper serve` as a process taking the RIS feed. python-hl7's `mllp_send`
(a client that is not ours) sends the example messages; DCMTK's findscu checks the worklist."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES_NOW, free_port
from tests.e2e import Gateway, dcmtk
from tests.hl7_messages import HL7, edited, hl7_settings
from tests.test_e2e_worklist import findscu
from tests.tools import missing_tool

pytestmark = pytest.mark.e2e

AUTHS = [{"auth_number": "PA-6001", "payer_id": "ACME_HEALTH", "patient_id": "MRN6001", "cpt_codes": ["70553"],
          "facility_npi": "1987654328", "ordering_npi": "1234567893", "valid_from": "2026-11-20",
          "valid_to": "2026-12-20"},
         {"auth_number": "PA-6100", "payer_id": "ACME_HEALTH", "patient_id": "MRN6100", "cpt_codes": ["70553"],
          "facility_npi": "1987654328", "ordering_npi": "1234567893", "valid_from": "2026-11-20",
          "valid_to": "2026-12-20"}]
KEYS = ["PatientName", "PatientID", "AccessionNumber", "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261201",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime", "RequestedProcedureComments"]


def mllp_send_command() -> str:
    """python-hl7's mllp_send (installed with the gatekeeper); fails under CI when missing."""
    script = Path(sys.executable).with_name("mllp_send")
    found = str(script) if script.exists() else shutil.which("mllp_send")
    if found:
        return found
    missing_tool("python-hl7's mllp_send is not installed (pip install hl7)")


@pytest.fixture
def feed_gateway(tmp_path):
    gw = Gateway(tmp_path, env=EXAMPLES_NOW)
    gw.hl7_port = free_port()
    hl7_settings(gw.settings, port=gw.hl7_port)
    auths = tmp_path / "auths.json"
    auths.write_text(json.dumps(AUTHS))
    gw.cli("auths", "import", str(auths))
    gw.start()
    deadline = time.monotonic() + 10
    while True:  # the MLLP listener starts with the DICOM one; poll until it accepts
        try:
            socket.create_connection(("127.0.0.1", gw.hl7_port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"the HL7 listener did not accept within 10 s:\n{gw.log()}")
            time.sleep(0.05)
    yield gw
    gw.stop()


def mllp_send(gw, path: Path) -> str:
    result = subprocess.run([mllp_send_command(), "--loose", "-p", str(gw.hl7_port), "-f", str(path), "127.0.0.1"],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode("latin-1").replace("\r", "\n")


def worklist(gw, tmp_path, *extra: str) -> dict:
    return {ds.AccessionNumber: ds for ds in findscu(gw, tmp_path, *KEYS, *extra)}


def test_the_feed_drives_the_worklist(feed_gateway, tmp_path):
    gw = feed_gateway
    dcmtk("findscu")
    assert worklist(gw, tmp_path) == {}

    # NW (v2.3.1, Latin-1, accession in OBR-18, LF line ends): authorized, so it appears
    assert "MSA|AA|RIS000101" in mllp_send(gw, HL7 / "orm_nw_v231.hl7")
    # NW (v2.5.1 OMI with IPC and TQ1): no auth on file for its CPT, so it stays off
    assert "MSA|AA|RIS000102" in mllp_send(gw, HL7 / "omi_nw_v251.hl7")
    found = worklist(gw, tmp_path)
    assert sorted(found) == ["ACC6001"]
    item = found["ACC6001"]
    assert str(item.PatientName) == "MÜLLER^JOSÉ^A^DR^JR" and item.PatientID == "MRN6001"
    step = item.ScheduledProcedureStepSequence[0]
    assert (step.ScheduledStationAETitle, step.ScheduledProcedureStepStartTime[:4]) == ("MR1", "0930")
    assert item.RequestedProcedureComments == "AUTH PA-6001"

    # XO moves it to 10:30
    assert "MSA|AA|RIS000103" in mllp_send(gw, HL7 / "orm_xo_v231.hl7")
    step = worklist(gw, tmp_path)["ACC6001"].ScheduledProcedureStepSequence[0]
    assert step.ScheduledProcedureStepStartTime[:4] == "1030"

    # the same message again: the same answer, nothing changes
    again = tmp_path / "again.hl7"
    again.write_bytes(edited("orm_xo_v231", ("^^^20261201103000", "^^^20261201110000")))  # same MSH-10
    assert "MSA|AA|RIS000103" in mllp_send(gw, again)
    assert worklist(gw, tmp_path)["ACC6001"].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime[:4] == "1030"

    # ORU: report status final (read back through the database after the stop)
    assert "MSA|AA|RIS000105" in mllp_send(gw, HL7 / "oru_final_v251.hl7")

    # A40: the order moves to MRN6100 (which has its own auth)
    assert "MSA|AA|RIS000107" in mllp_send(gw, HL7 / "adt_a40_v251.hl7")
    found = worklist(gw, tmp_path, "PatientID=MRN6100")
    assert sorted(found) == ["ACC6001"] and found["ACC6001"].RequestedProcedureComments == "AUTH PA-6100"
    assert worklist(gw, tmp_path, "PatientID=MRN6001") == {}

    # CA removes it
    cancel = tmp_path / "cancel.hl7"
    cancel.write_bytes(edited("orm_ca_v231", ("ACC6002", "ACC6001"), ("MRN6002", "MRN6100"), control_id="RIS000108"))
    assert "MSA|AA|RIS000108" in mllp_send(gw, cancel)
    assert worklist(gw, tmp_path) == {}

    # gatekeeper hl7 send (our own client): two messages separated by a blank line, each ACK printed
    both = tmp_path / "both.hl7"
    both.write_bytes(edited("omi_nw_v251", control_id="RIS000109") + b"\n\n"
                     + edited("orm_xo_v231", ("ACC6001", "ACC9999"), control_id="RIS000110"))
    result = gw.cli("hl7", "send", str(both), "--port", str(gw.hl7_port), check=False)
    assert result.returncode == 1, result.stderr  # the second is refused: unknown accession
    assert "message 1: AA" in result.stdout and "message 2: AE" in result.stdout
    assert "ERR|OBR^1^18^204" in result.stdout

    assert gw.stop() == 0
    log = gw.log()
    assert "HL7 (MLLP) listening on" in log and "MÜLLER" not in log  # no patient names at INFO
    why = gw.cli("worklist", "why", "ACC6001", "--json")
    assert json.loads(why.stdout)["status"] == "cancelled"
    from gateway.app import open_app
    from gateway.settings import load

    app = open_app(load(gw.settings, environ={}))
    try:
        order = app.gate.find_order("ACC6001")
        assert (order.report_status, order.patient_id) == ("final", "MRN6100")
    finally:
        app.close()
