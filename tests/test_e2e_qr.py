"""End to end: `gatekeeper serve` as a process, studies sent by DCMTK's storescu, then
DCMTK's findscu (Study Root -S and Patient Root -P), movescu (to a DCMTK storescp started
here on a free port and listed under [peers]) and getscu, checking what each one gets."""

from __future__ import annotations

import subprocess
import time

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from tests.conftest import EXAMPLES, EXAMPLES_NOW, free_port
from tests.dicom_factory import make_instance, write_instance
from tests.e2e import Gateway, dcmtk, echo_ok

pytestmark = pytest.mark.e2e


def study_files(folder, count=2, **overrides):
    """``count`` instances of one new study for ACC1001's patient (MRN5001 DOE^JANE^Q 19800203 F, MR)."""
    study, series = generate_uid(), generate_uid()
    values = dict(StudyInstanceUID=study, SeriesInstanceUID=series, StudyDate="20261201", **overrides)
    paths = [write_instance(folder / study / f"{n}.dcm", make_instance(InstanceNumber=str(n + 1), **values))
             for n in range(count)]
    return study, paths


@pytest.fixture
def storescp(tmp_path):
    """DCMTK's storescp as the move destination STORESCP, on a free port; (port, folder)."""
    port, folder = free_port(), tmp_path / "storescp"
    folder.mkdir()
    process = subprocess.Popen([dcmtk("storescp"), "-aet", "STORESCP", "-od", str(folder), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while not echo_ok(port, timeout=1):
        assert process.poll() is None and time.monotonic() < deadline, "storescp did not start"
        time.sleep(0.1)
    yield port, folder
    process.terminate()
    process.wait(10)


@pytest.fixture
def gw(tmp_path, storescp):
    """`serve` with the example orders, STORESCP under [peers], TECH_WS a held viewer; one archived
    study (2 instances) and one held study (wrong birth date, 1 instance) sent by storescu."""
    folder = tmp_path / "gw"
    folder.mkdir()
    gateway = Gateway(folder, extra_settings=f'[peers.STORESCP]\nhost = "127.0.0.1"\nport = {storescp[0]}\n',
                      env=EXAMPLES_NOW)
    text = gateway.settings.read_text().replace("include_held = false", "include_held = true")
    gateway.settings.write_text(text.replace("held_viewers = []", 'held_viewers = ["TECH_WS"]'))
    gateway.cli("orders", "import", str(EXAMPLES / "orders.json"))
    gateway.cli("auths", "import", str(EXAMPLES / "auths.json"))
    gateway.start()
    archived, archived_paths = study_files(tmp_path / "sent")
    held, held_paths = study_files(tmp_path / "sent", count=1, PatientBirthDate="19800302")
    sent = subprocess.run([dcmtk("storescu"), "-aet", "MR1", "-aec", "GATEKEEPER", "127.0.0.1", str(gateway.port),
                           *map(str, archived_paths + held_paths)], capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    gateway.studies = {"archived": (archived, archived_paths), "held": (held, held_paths)}
    yield gateway
    assert gateway.stop() == 0, gateway.log()


def run(tool: str, gw, *args, calling="VIEWER", cwd=None) -> subprocess.CompletedProcess:
    result = subprocess.run([dcmtk(tool), "-aet", calling, "-aec", "GATEKEEPER", *args, "127.0.0.1", str(gw.port)],
                            capture_output=True, text=True, timeout=120, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def findscu(gw, tmp_path, model: str, *keys: str, calling="VIEWER"):
    """The responses findscu extracted, as datasets."""
    out = tmp_path / f"find-{generate_uid()}"
    out.mkdir()
    run("findscu", gw, model, "-X", "-od", str(out), *[a for k in keys for a in ("-k", k)], calling=calling)
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_findscu_study_root_sees_the_archived_study_and_a_held_viewer_the_held_one(gw, tmp_path):
    archived, held = gw.studies["archived"][0], gw.studies["held"][0]
    keys = ("QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientName", "PatientID=MRN5001", "StudyDate",
            "AccessionNumber", "ModalitiesInStudy", "NumberOfStudyRelatedInstances")
    answers = findscu(gw, tmp_path, "-S", *keys)
    assert [a.StudyInstanceUID for a in answers] == [archived]
    a = answers[0]
    assert (str(a.PatientName), a.AccessionNumber, a.StudyDate, a.ModalitiesInStudy) == (
        "DOE^JANE^Q", "ACC1001", "20261201", "MR")
    assert int(a.NumberOfStudyRelatedInstances) == 2
    assert {a.StudyInstanceUID for a in findscu(gw, tmp_path, "-S", *keys, calling="TECH_WS")} == {archived, held}
    series = findscu(gw, tmp_path, "-S", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={archived}",
                     "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances")
    assert [(s.Modality, int(s.NumberOfSeriesRelatedInstances)) for s in series] == [("MR", 2)]
    images = findscu(gw, tmp_path, "-S", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={archived}",
                     f"SeriesInstanceUID={series[0].SeriesInstanceUID}", "SOPInstanceUID", "InstanceNumber")
    assert sorted(str(i.InstanceNumber) for i in images) == ["1", "2"]


def test_findscu_patient_root(gw, tmp_path):
    patients = findscu(gw, tmp_path, "-P", "QueryRetrieveLevel=PATIENT", "PatientID", "PatientName=DOE*",
                       "NumberOfPatientRelatedStudies")
    assert [(p.PatientID, int(p.NumberOfPatientRelatedStudies)) for p in patients] == [("MRN5001", 1)]
    studies = findscu(gw, tmp_path, "-P", "QueryRetrieveLevel=STUDY", "PatientID=MRN5001", "StudyInstanceUID")
    assert [s.StudyInstanceUID for s in studies] == [gw.studies["archived"][0]]


def test_movescu_to_storescp_delivers_the_study(gw, tmp_path, storescp):
    archived, paths = gw.studies["archived"]
    run("movescu", gw, "-S", "-aem", "STORESCP", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={archived}")
    received = {dcmread(p).SOPInstanceUID: dcmread(p) for p in storescp[1].iterdir()}
    sent = {dcmread(p).SOPInstanceUID: dcmread(p) for p in paths}
    assert set(received) == set(sent)
    assert all(received[uid].PixelData == sent[uid].PixelData for uid in sent)


def test_movescu_of_a_held_study_sends_nothing_to_a_viewer_and_an_unknown_destination_fails(gw, tmp_path, storescp):
    held = gw.studies["held"][0]
    run("movescu", gw, "-S", "-aem", "STORESCP", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={held}")
    assert list(storescp[1].iterdir()) == []
    run("movescu", gw, "-S", "-aem", "STORESCP", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={held}",
        calling="TECH_WS")
    assert [dcmread(p).StudyInstanceUID for p in storescp[1].iterdir()] == [held]
    result = subprocess.run([dcmtk("movescu"), "-aet", "VIEWER", "-aec", "GATEKEEPER", "-S", "-aem", "NOBODY",
                             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={held}", "127.0.0.1",
                             str(gw.port)], capture_output=True, text=True, timeout=60)
    assert "MoveDestinationUnknown" in result.stdout + result.stderr, result.stdout + result.stderr


def test_getscu_receives_the_files(gw, tmp_path):
    archived, paths = gw.studies["archived"]
    out = tmp_path / "got"
    out.mkdir()
    run("getscu", gw, "-S", "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={archived}")
    received = {dcmread(p).SOPInstanceUID: dcmread(p) for p in out.iterdir()}
    sent = {dcmread(p).SOPInstanceUID: dcmread(p) for p in paths}
    assert set(received) == set(sent)
    assert all(received[uid].PixelData == sent[uid].PixelData for uid in sent)
    assert "Q/R C-GET from VIEWER" in gw.log() and "DOE^JANE" not in gw.log()
