"""End to end: `gatekeeper serve` forwarding to real peers on loopback (docs/rules.md, rule 10).

Orthanc is the PACS (with storage commitment: its report comes back on a new association
to the gatekeeper), DCMTK's storescp a second destination. Studies reach the gateway from
DCMTK's storescu as from a modality; what arrived is counted through Orthanc's REST API and
storescp's folder.
"""

from __future__ import annotations

import io
import json
import signal

import pytest
from pydicom import dcmread

from tests.conftest import EXAMPLES, EXAMPLES_NOW, free_port
from tests.e2e import Gateway
from tests.peers import Orthanc, SlowSCP, StoreSCP, wait_for
from tests.test_e2e_store import storescu, study_files

pytestmark = pytest.mark.e2e

WAIT = 60  # seconds: generous for a loaded machine; every wait polls


def destinations(pacs_port: int, store_port: int | None = None, *, store_ae: str = "STORESCP",
                 commitment: bool = True) -> str:
    text = (f'\n[forward.PACS]\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs_port}\n'
            f'storage_commitment = {"true" if commitment else "false"}\n')
    if store_port:
        text += f'\n[forward.STORE2]\nae_title = "{store_ae}"\nhost = "127.0.0.1"\nport = {store_port}\n'
    return text


def gateway_with(folder, extra: str) -> Gateway:
    folder.mkdir(parents=True, exist_ok=True)
    gw = Gateway(folder, extra_settings=extra, env=EXAMPLES_NOW)
    gw.cli("orders", "import", str(EXAMPLES / "orders.json"))
    gw.cli("auths", "import", str(EXAMPLES / "auths.json"))
    return gw


def queue(gw: Gateway, *args: str) -> list[dict]:
    return json.loads(gw.cli("forward", "list", "--json", *args).stdout)["studies"]


def states(gw: Gateway, study: str, destination: str) -> dict[str, int]:
    for group in queue(gw):
        if group["study_instance_uid"] == study and group["destination"] == destination:
            return group["counts"]
    return {}


def done(gw: Gateway, study: str, destination: str, state: str, count: int):
    return lambda: states(gw, study, destination).get(state) == count


@pytest.fixture
def site(tmp_path):
    """Orthanc (PACS, storage commitment) and storescp (STORE2) in front of one gateway, all running."""
    pacs_port = free_port()
    store = StoreSCP(tmp_path / "store2")
    gw = gateway_with(tmp_path / "gw", destinations(pacs_port, store.port))
    pacs = Orthanc(tmp_path / "pacs", dicom_port=pacs_port, gateway_port=gw.port)
    pacs.start()
    store.start()
    gw.start()
    yield gw, pacs, store
    try:
        assert gw.stop() == 0, gw.log()
    finally:
        pacs.stop()
        store.stop()


def test_a_clean_study_arrives_at_both_destinations_with_identical_pixel_data(site, tmp_path):
    gw, pacs, store = site
    study, paths = study_files(tmp_path / "sent", count=3)
    storescu(gw, *paths)

    wait_for(done(gw, study, "PACS", "committed", 3), WAIT, "Orthanc's storage commitment of 3 instances")
    wait_for(done(gw, study, "STORE2", "sent", 3), WAIT, "3 instances at storescp")
    sent = {dcmread(p).SOPInstanceUID: dcmread(p) for p in paths}
    at_pacs = pacs.by_sop()
    assert set(at_pacs) == set(sent)
    for sop, orthanc_id in at_pacs.items():
        received = dcmread(io.BytesIO(pacs.file(orthanc_id)))
        assert received.PixelData == sent[sop].PixelData
    at_store = {dcmread(p).SOPInstanceUID: dcmread(p) for p in store.files()}
    assert set(at_store) == set(sent)
    for sop, ds in at_store.items():
        assert ds.PixelData == sent[sop].PixelData
        assert ds.file_meta.TransferSyntaxUID == sent[sop].file_meta.TransferSyntaxUID
    assert store.requests() == 3  # one C-STORE each, no duplicate
    log = gw.log()
    assert "storage commitment report from PACS" in log and "3 instances committed" in log
    assert "DOE^JANE" not in log


def test_a_held_study_never_arrives_and_arrives_once_released(site, tmp_path):
    gw, pacs, store = site
    clean, clean_paths = study_files(tmp_path / "clean", count=1)
    wrong, paths = study_files(tmp_path / "held", count=2, PatientBirthDate="19800302")
    storescu(gw, *paths)
    storescu(gw, *clean_paths)  # forwarded after the held one arrived: its queue was not blocked
    wait_for(done(gw, clean, "STORE2", "sent", 1), WAIT, "the clean study at storescp")
    wait_for(done(gw, clean, "PACS", "committed", 1), WAIT, "the clean study committed by Orthanc")
    held_sops = {dcmread(p).SOPInstanceUID for p in paths}
    assert not held_sops & set(pacs.by_sop()) and len(store.files()) == 1
    assert all(g["study_instance_uid"] != wrong for g in queue(gw))

    gw.cli("held", "release", wrong, "--user", "tech.anna", "--reason", "confirmed with patient")
    wait_for(done(gw, wrong, "PACS", "committed", 2), WAIT, "the released study committed by Orthanc")
    wait_for(done(gw, wrong, "STORE2", "sent", 2), WAIT, "the released study at storescp")
    assert held_sops <= set(pacs.by_sop())
    assert {dcmread(p).SOPInstanceUID for p in store.files()} >= held_sops and store.requests() == 3


def test_a_study_corrected_after_forwarding_is_sent_again_with_the_corrected_demographics(site, tmp_path):
    gw, pacs, store = site
    study, paths = study_files(tmp_path / "first", count=2)
    storescu(gw, *paths)
    wait_for(done(gw, study, "PACS", "committed", 2), WAIT, "the clean study committed by Orthanc")
    # a late instance with a typo holds the archived study again; the correction fixes every instance
    late = study_files(tmp_path / "late", count=1)[1][0]
    ds = dcmread(late)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, dcmread(paths[0]).SeriesInstanceUID
    ds.PatientName = "DOE^JAIN"
    ds.save_as(late)
    storescu(gw, late)
    assert json.loads(gw.cli("held", "list", "--json").stdout)["held"][0]["study_instance_uid"] == study
    assert states(gw, study, "PACS") == {"pending": 0, "sent": 0, "committed": 2, "failed": 0}

    gw.cli("held", "correct", study, "--user", "tech.anna", "--reason", "typo at console")
    wait_for(done(gw, study, "PACS", "committed", 3), WAIT, "the corrected study committed by Orthanc")
    wait_for(done(gw, study, "STORE2", "sent", 3), WAIT, "the corrected study at storescp")
    at_pacs = pacs.by_sop()
    assert set(at_pacs) >= {dcmread(p).SOPInstanceUID for p in [*paths, late]}
    for orthanc_id in at_pacs.values():
        tags = pacs.tags(orthanc_id)
        assert (tags["PatientName"], tags["PatientBirthDate"]) == ("DOE^JANE^Q", "19800203")
    for path in store.files():
        corrected = dcmread(path)
        assert str(corrected.PatientName) == "DOE^JANE^Q" and "OriginalAttributesSequence" in corrected
    # 2 clean sends + 3 after the correction; the held late instance was never sent on its own
    assert store.requests() == 5


def test_a_study_from_the_pacs_goes_back_to_it_only_when_corrected(site, tmp_path):
    gw, pacs, store = site
    clean, paths = study_files(tmp_path / "clean", count=2)
    storescu(gw, *paths, calling="PACS")  # the PACS forwards to the gatekeeper for reconciliation
    wait_for(done(gw, clean, "STORE2", "sent", 2), WAIT, "the PACS's clean study at storescp")
    assert states(gw, clean, "PACS") == {} and pacs.instances() == []

    released, paths = study_files(tmp_path / "released", count=1, PatientBirthDate="19800302")
    storescu(gw, *paths, calling="PACS")
    gw.cli("held", "release", released, "--user", "tech.anna", "--reason", "as is")
    wait_for(done(gw, released, "STORE2", "sent", 1), WAIT, "the released study at storescp")
    assert states(gw, released, "PACS") == {} and pacs.instances() == []

    wrong, paths = study_files(tmp_path / "wrong", count=2, PatientName="DOE^JAIN")
    storescu(gw, *paths, calling="PACS")
    gw.cli("held", "correct", wrong, "--user", "tech.anna", "--reason", "typo at console")
    wait_for(done(gw, wrong, "PACS", "committed", 2), WAIT, "the corrected study back at the PACS")
    assert {pacs.tags(i)["PatientName"] for i in pacs.instances()} == {"DOE^JANE^Q"}
    assert len(pacs.instances()) == 2


def test_a_destination_down_at_first_gets_the_study_once_it_is_up_without_duplicates(tmp_path):
    store = StoreSCP(tmp_path / "store2")
    gw = gateway_with(tmp_path / "gw", f'\n[forward.STORE2]\nae_title = "STORESCP"\nhost = "127.0.0.1"\n'
                                        f'port = {store.port}\n')
    gw.start()
    try:
        study, paths = study_files(tmp_path / "sent", count=3)
        storescu(gw, *paths)
        waiting = wait_for(lambda: [g for g in queue(gw, "--state", "pending")
                                    if g["destination"] == "STORE2" and g["attempts"] >= 1], WAIT,
                           "a failed first attempt")
        assert "did not answer" in waiting[0]["last_error"] and waiting[0]["counts"]["pending"] == 3
        assert "did not answer" in gw.cli("forward", "list").stdout
        store.start()
        wait_for(done(gw, study, "STORE2", "sent", 3), WAIT, "the study at storescp once it is up")
        assert len(store.files()) == 3 and store.requests() == 3
        assert gw.cli("forward", "list", "--state", "failed").stdout.strip() == "nothing queued in state failed"
    finally:
        assert gw.stop() == 0, gw.log()
        store.stop()


def test_kill_9_in_the_middle_of_forwarding_loses_nothing(tmp_path):
    slow = SlowSCP(delay=0.15).start()
    gw = gateway_with(tmp_path / "gw", f'\n[forward.SLOW]\nae_title = "SLOW"\nhost = "127.0.0.1"\nport = {slow.port}\n')
    try:
        gw.start()
        study, paths = study_files(tmp_path / "sent", count=60)
        storescu(gw, *paths)
        sops = {dcmread(p).SOPInstanceUID for p in paths}
        wait_for(lambda: 5 <= states(gw, study, "SLOW").get("sent", 0) < 50, WAIT, "forwarding under way",
                 interval=0.05)
        gw.process.send_signal(signal.SIGKILL)
        gw.process.wait(10)
        after_kill = {i["sop_instance_uid"]: i["state"] for i in queue(gw)[0]["instances"]}
        sent = {sop for sop, state in after_kill.items() if state == "sent"}
        assert set(after_kill) == sops and sent <= set(slow.received)
        # at most the last moment's instances were received and not yet recorded (one in flight, one being
        # recorded, one waiting to be)
        assert len(set(slow.received) - sent) <= 3
        assert {s for s in after_kill.values()} == {"sent", "pending"}

        gw.start()
        wait_for(done(gw, study, "SLOW", "sent", 60), WAIT, "the rest after the restart")
        assert set(slow.received) == sops
        assert len(slow.received) <= len(sops) + 3
        assert "queued again" in gw.log()
    finally:
        gw.stop()
        slow.stop()


def test_a_destination_refusing_the_stored_syntax_gets_implicit_vr_and_a_compressed_one_fails(tmp_path):
    from pydicom import uid as ts
    from pydicom.encaps import encapsulate

    from tests.dicom_factory import make_instance, write_instance

    store = StoreSCP(tmp_path / "implicit", options=("+xi",))  # accepts Implicit VR Little Endian only
    gw = gateway_with(tmp_path / "gw", f'\n[forward.OLD]\nae_title = "STORESCP"\nhost = "127.0.0.1"\n'
                                        f'port = {store.port}\n')
    store.start()
    gw.start()
    try:
        study, paths = study_files(tmp_path / "sent", count=2)
        jpeg = make_instance(transfer_syntax_uid=ts.JPEGBaseline8Bit, StudyInstanceUID=study, StudyDate="20261201",
                             BitsAllocated=8, BitsStored=8, HighBit=7)
        jpeg.PixelData = encapsulate([b"\xff\xd8\xff\xe0 fake frame \xff\xd9"])
        jpeg["PixelData"].VR = "OB"
        paths.append(write_instance(tmp_path / "sent" / "jpeg.dcm", jpeg))
        storescu(gw, *paths, options=("-R", "-xy"))
        wait_for(lambda: states(gw, study, "OLD") == {"pending": 0, "sent": 2, "committed": 0, "failed": 1}, WAIT,
                 "two sent in Implicit VR, the JPEG failed")
        sent = {dcmread(p).SOPInstanceUID: dcmread(p) for p in paths[:2]}
        for path in store.files():
            got = dcmread(path)
            assert got.file_meta.TransferSyntaxUID == ts.ImplicitVRLittleEndian
            assert got.PixelData == sent[got.SOPInstanceUID].PixelData
        assert len(store.files()) == 2
        [failed] = [i for i in queue(gw, "--state", "failed")[0]["instances"] if i["state"] == "failed"]
        assert failed["sop_instance_uid"] == jpeg.SOPInstanceUID
        assert "stored in 1.2.840.10008.1.2.4.50, which is not converted" in failed["last_error"]
        retried = gw.cli("forward", "retry", study, "--user", "tech.anna")
        assert "1 instance of study" in retried.stdout
    finally:
        assert gw.stop() == 0, gw.log()
        store.stop()
