"""End to end: `gatekeeper serve` as a process, the shared examples imported with the
CLI, and DCMTK's findscu querying the worklist the way a modality console does."""

import subprocess

import pytest
from pydicom import dcmread

from tests.e2e import dcmtk, echo_ok

pytestmark = pytest.mark.e2e





def findscu(gw, tmp_path, *keys: str, calling: str = "MR1") -> list:
    """Run `findscu -W` with the given -k keys; return the response datasets."""
    out = tmp_path / "responses"
    out.mkdir(exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    cmd = [dcmtk("findscu"), "-W", "-aet", calling, "-aec", "GATEKEEPER", "-X", "-od", str(out)]
    for key in keys:
        cmd += ["-k", key]
    cmd += ["127.0.0.1", str(gw.port)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [dcmread(p) for p in sorted(out.iterdir())]


CONSOLE_KEYS = [
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "RequestedProcedureDescription", "RequestedProcedureComments", "StudyInstanceUID",
    "ReferringPhysicianName", "RequestedProcedureCodeSequence[0].CodeValue",
    "RequestedProcedureCodeSequence[0].CodingSchemeDesignator",
    "ScheduledProcedureStepSequence[0].Modality",
    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
]


def test_echoscu_answers(examples_gateway):
    result = subprocess.run([dcmtk("echoscu"), "-aec", "GATEKEEPER", "127.0.0.1", str(examples_gateway.port)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_findscu_sees_what_the_examples_readme_expects(examples_gateway, tmp_path):
    found = findscu(examples_gateway, tmp_path, *CONSOLE_KEYS,
                    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261201")
    by_acc = {ds.AccessionNumber: ds for ds in found}
    # ACC1001 served naming PA-778899; ACC1002 withheld; ACC1003 served, no auth needed.
    assert sorted(by_acc) == ["ACC1001", "ACC1003"]
    assert by_acc["ACC1001"].RequestedProcedureComments == "AUTH PA-778899"
    assert by_acc["ACC1003"].RequestedProcedureComments == ""
    mri = by_acc["ACC1001"]
    assert str(mri.PatientName) == "DOE^JANE^Q" and mri.PatientID == "MRN5001"
    assert mri.RequestedProcedureCodeSequence[0].CodeValue == "70553"
    assert mri.RequestedProcedureCodeSequence[0].CodingSchemeDesignator == "C4"
    step = mri.ScheduledProcedureStepSequence[0]
    assert (step.Modality, step.ScheduledStationAETitle, step.ScheduledProcedureStepStartDate,
            step.ScheduledProcedureStepStartTime[:4]) == ("MR", "MR1", "20261201", "0930")
    assert mri.StudyInstanceUID  # assigned at import
    assert "IssuerOfPatientID" not in mri  # not asked for, not returned


def test_console_query_for_its_station(examples_gateway, tmp_path):
    found = findscu(examples_gateway, tmp_path, "AccessionNumber",
                    "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=DX1",
                    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261201")
    assert [ds.AccessionNumber for ds in found] == ["ACC1003"]


def test_withheld_order_is_not_found_even_by_accession(examples_gateway, tmp_path):
    assert findscu(examples_gateway, tmp_path, "AccessionNumber=ACC1002", "PatientName") == []


def test_override_puts_the_withheld_order_on_the_console(examples_gateway, tmp_path):
    examples_gateway.cli("orders", "override", "ACC1002", "--user", "dr.ortho", "--reason", "acute injury")
    found = findscu(examples_gateway, tmp_path, "AccessionNumber=ACC1002", "RequestedProcedureComments")
    assert [ds.AccessionNumber for ds in found] == ["ACC1002"]


def test_cli_worklist_agrees_with_the_console(examples_gateway):
    import json

    out = json.loads(examples_gateway.cli("worklist", "--date", "2026-12-01", "--json").stdout)
    assert [(o["accession_number"], o["served"], o["auth_number"]) for o in out["orders"]] == [
        ("ACC1001", True, "PA-778899"), ("ACC1002", False, "PA-112233"), ("ACC1003", True, None)]
    assert [r["code"] for r in out["orders"][1]["reasons"]] == ["AUTH_DATE_OUT_OF_RANGE", "AUTH_LATERALITY_MISMATCH"]


def test_sigterm_stops_the_server_cleanly(examples_gateway):
    assert examples_gateway.stop() == 0
    assert not echo_ok(examples_gateway.port)
    assert "stopped" in examples_gateway.log()
