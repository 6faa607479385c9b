"""End to end: `gatekeeper serve` as a process with the shared examples imported by the CLI,
DCMTK's storescu sending studies as a modality does, and the review verbs on the command line."""

from __future__ import annotations

import json
import subprocess

import pytest
from pydicom import dcmread
from pydicom import uid as ts
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from tests.dicom_factory import make_instance, write_instance
from tests.e2e import dcmtk

pytestmark = pytest.mark.e2e





def study_files(folder, count=2, **overrides):
    """``count`` instances of one new study for ACC1001's patient (MRN5001 DOE^JANE^Q 19800203 F, MR)."""
    study, series = generate_uid(), generate_uid()
    values = dict(StudyInstanceUID=study, SeriesInstanceUID=series, StudyDate="20261201", **overrides)
    paths = []
    for n in range(count):
        ds = make_instance(InstanceNumber=str(n + 1), **values)
        paths.append(write_instance(folder / study / f"{n}.dcm", ds))
    return study, paths


def storescu(gw, *paths, calling="MR1", options=()):
    result = subprocess.run([dcmtk("storescu"), *options, "-aet", calling, "-aec", "GATEKEEPER", "127.0.0.1",
                             str(gw.port), *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def held(gw) -> list[dict]:
    return json.loads(gw.cli("held", "list", "--json").stdout)["held"]


def store_tree(gw, tree):
    return sorted((gw.folder / "var" / "store" / tree).rglob("*.dcm"))


def test_a_matching_study_from_storescu_lands_in_the_archive(examples_gateway, tmp_path):
    study, paths = study_files(tmp_path, count=3)
    jpeg = make_instance(transfer_syntax_uid=ts.JPEGBaseline8Bit, StudyInstanceUID=study, StudyDate="20261201",
                         BitsAllocated=8, BitsStored=8, HighBit=7)
    jpeg.PixelData = encapsulate([b"\xff\xd8\xff\xe0 fake frame \xff\xd9"])
    jpeg["PixelData"].VR = "OB"
    paths.append(write_instance(tmp_path / study / "jpeg.dcm", jpeg))
    # -xy: propose JPEG baseline as well as uncompressed, each in its own context; -R: only
    # the SOP classes the files need. storescu sends each file in its own transfer syntax.
    storescu(examples_gateway, *paths, options=("-R", "-xy"))

    archived = store_tree(examples_gateway, "archive")
    assert len(archived) == 4 and store_tree(examples_gateway, "held") == []
    stored = {dcmread(p).SOPInstanceUID: p for p in archived}
    for sent in paths:
        ds = dcmread(sent)
        assert dcmread(stored[ds.SOPInstanceUID]).file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert held(examples_gateway) == []
    listing = json.loads(examples_gateway.cli("studies", "list", "--json", "--accession", "ACC1001").stdout)
    [entry] = listing["studies"]
    assert (entry["study_instance_uid"], entry["instance_count"]) == (study, 4)
    assert entry["order"]["accession_number"] == "ACC1001" and entry["order"]["cpt"] == "70553"
    log = examples_gateway.log()
    assert f"C-STORE from MR1: instance {dcmread(paths[0]).SOPInstanceUID}, accession ACC1001, archived" in log
    assert "DOE^JANE" not in log and "MRN5001" not in log


def test_a_wrong_birth_date_is_held_listed_and_released(examples_gateway, tmp_path):
    study, paths = study_files(tmp_path, PatientBirthDate="19800302")
    storescu(examples_gateway, *paths)
    assert store_tree(examples_gateway, "archive") == [] and len(store_tree(examples_gateway, "held")) == 2

    [entry] = held(examples_gateway)
    assert (entry["study_instance_uid"], entry["accession_number"], entry["instance_count"]) == (study, "ACC1001", 2)
    assert entry["codes"] == ["BIRTH_DATE_MISMATCH"]
    shown = json.loads(examples_gateway.cli("held", "show", study, "--json").stdout)
    [finding] = [f for f in shown["findings"] if f["holds"]]
    assert (finding["code"], finding["instance_value"], finding["order_value"], finding["instances"]) == (
        "BIRTH_DATE_MISMATCH", "19800302", "19800203", 2)
    assert shown["order"]["accession_number"] == "ACC1001"
    text = examples_gateway.cli("held", "show", study).stdout
    [line] = [line.split() for line in text.splitlines() if "BIRTH_DATE_MISMATCH" in line]
    assert line[:4] == ["BIRTH_DATE_MISMATCH", "19800302", "|", "19800203"]

    done = examples_gateway.cli("held", "release", study, "--user", "tech.anna", "--reason", "confirmed with patient")
    assert "released" in done.stdout
    assert held(examples_gateway) == []
    assert len(store_tree(examples_gateway, "archive")) == 2 and store_tree(examples_gateway, "held") == []
    again = examples_gateway.cli("held", "release", study, "--user", "tech.anna", "--reason", "twice", check=False)
    assert again.returncode == 1 and "archived, not held" in again.stderr


def test_correct_and_reject_from_the_command_line(examples_gateway, tmp_path):
    wrong, paths = study_files(tmp_path, PatientName="DOE^JAIN")
    storescu(examples_gateway, *paths)
    done = examples_gateway.cli("held", "correct", wrong, "--user", "tech.anna", "--reason", "typo at console")
    assert "corrected from order ACC1001" in done.stdout and "PatientName" in done.stdout
    for path in store_tree(examples_gateway, "archive"):
        ds = dcmread(path)
        assert str(ds.PatientName) == "DOE^JANE^Q" and ds.IssuerOfPatientID == "NORTHSIDE"
        assert str(ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientName) == "DOE^JAIN"

    stray, paths = study_files(tmp_path, AccessionNumber="NOPE1")
    storescu(examples_gateway, *paths)
    assert [h["codes"] for h in held(examples_gateway)] == [["ACCESSION_UNKNOWN"]]
    refused = examples_gateway.cli("held", "correct", stray, "--user", "u", "--reason", "r", check=False)
    assert refused.returncode == 1 and "NOPE1" in refused.stderr
    examples_gateway.cli("held", "reject", stray, "--user", "tech.anna", "--reason", "test images")
    assert held(examples_gateway) == [] and len(store_tree(examples_gateway, "rejected")) == 2
    unknown = examples_gateway.cli("held", "show", "1.2.3.404", check=False)
    assert unknown.returncode == 1 and "no study" in unknown.stderr
