"""Query/Retrieve SCP (gateway/dicom/qr.py) in process, with a pynetdicom SCU: C-FIND at every
level of both models, who sees held studies, C-CANCEL, C-MOVE (known, unknown and failing
destinations, counts and statuses), C-GET with role selection, and answers after a correction.

Three studies of patient MRN5001 are received: ARCHIVED (clean: two MR series, three
instances), HELD (the patient's name differs from the order: held) and REJECTED (held, then
rejected). The settings let TECH_WS see held studies; the move destination DEST is an
in-process storage SCP.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (
    MRImageStorage, PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelMove, Verification,
)

from store.models import StudyRow
from store.states import ARCHIVED, HELD, REJECTED
from tests.conftest import free_port, write_settings
from tests.dicom_factory import make_instance, make_order, write_instance
from worklist.orders import Auth

ARCHIVED_UID = "1.2.826.0.1.3680043.8.498.2001"
HELD_UID = "1.2.826.0.1.3680043.8.498.2002"
REJECTED_UID = "1.2.826.0.1.3680043.8.498.2003"
SERIES_1, SERIES_2 = ARCHIVED_UID + ".1", ARCHIVED_UID + ".2"
FIND, MOVE, GET = (StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove,
                   StudyRootQueryRetrieveInformationModelGet)


class Receiver:
    """A storage SCP on a free port that keeps what it receives (the C-MOVE destination)."""

    def __init__(self, ae_title: str = "DEST") -> None:
        self.port = free_port()
        self.received: list[Dataset] = []
        self.ae = AE(ae_title=ae_title)
        self.ae.add_supported_context(Verification)  # as DCMTK's storescp does
        for context in StoragePresentationContexts:
            self.ae.add_supported_context(context.abstract_syntax)
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


@pytest.fixture
def receiver():
    running = Receiver()
    yield running
    running.stop()


@pytest.fixture
def settings_path(tmp_path, receiver):
    path = write_settings(tmp_path, extra=f'[peers.DEST]\nhost = "127.0.0.1"\nport = {receiver.port}\n')
    text = path.read_text().replace("include_held = false", "include_held = true")
    path.write_text(text.replace("held_viewers = []", 'held_viewers = ["TECH_WS"]'))
    return path


def receive(app, tmp_path, **overrides):
    ds = make_instance(**overrides)
    path = write_instance(tmp_path / "sent" / f"{ds.SOPInstanceUID}.dcm", ds)
    app.store.receive(path, "MR1")
    return ds


@pytest.fixture
def studies(app, tmp_path):
    """The three studies; returns the datasets sent, by SOP Instance UID."""
    app.gate.import_orders([make_order(study_instance_uid=ARCHIVED_UID)])
    app.gate.import_auths([Auth(auth_number="PA-1", payer_id="ACME", patient_id="MRN5001", cpt_codes=("70551",),
                                facility_npi="1245319599", ordering_npi="1234567893", valid_from=dt.date(2025, 3, 1),
                                valid_to=dt.date(2025, 3, 31), units=1, units_used=0)])
    sent = {}
    for series, number, instance, description in ((SERIES_1, "1", "1", "T1 AX"), (SERIES_1, "1", "2", "T1 AX"),
                                                  (SERIES_2, "2", "1", "T2 SAG")):
        ds = receive(app, tmp_path, StudyInstanceUID=ARCHIVED_UID, SeriesInstanceUID=series, SeriesNumber=number,
                     InstanceNumber=instance, SeriesDescription=description, StudyID="S2001")
        sent[ds.SOPInstanceUID] = ds
    held = receive(app, tmp_path, StudyInstanceUID=HELD_UID, PatientName="DOE^JOAN", StudyID="S2002")
    sent[held.SOPInstanceUID] = held
    receive(app, tmp_path, StudyInstanceUID=REJECTED_UID, PatientName="DOE^JOAN")
    app.store.reject(REJECTED_UID, user="tech", reason="wrong patient")
    states = {r.study_instance_uid: r.state for r in StudyRow.select()}
    assert states == {ARCHIVED_UID: ARCHIVED, HELD_UID: HELD, REJECTED_UID: REJECTED}
    return sent


def identifier(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def associate(port: int, calling: str, *contexts, roles=None):
    ae = AE(ae_title=calling)
    for context in contexts:
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER", ext_neg=roles)
    assert assoc.is_established
    return assoc


def find(port: int, ds: Dataset, calling: str = "VIEWER", model=FIND) -> tuple[list[Dataset], int]:
    assoc = associate(port, calling, model)
    answers, final = [], None
    for status, answer in assoc.send_c_find(ds, model):
        if status.Status == 0xFF00:
            answers.append(answer)
        else:
            final = status.Status
    assoc.release()
    return answers, final


# ------------------------------------------------------------------------- C-FIND


def test_study_level_finds_archived_studies_with_their_keys(server, studies):
    answers, final = find(server.port, identifier(
        "STUDY", PatientID="MRN5001", PatientName="", PatientBirthDate="", PatientSex="", StudyDate="", StudyTime="",
        AccessionNumber="", StudyID="", StudyInstanceUID="", StudyDescription="", ModalitiesInStudy="",
        NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="", SOPClassesInStudy=""))
    assert final == 0x0000 and len(answers) == 1
    a = answers[0]
    assert a.StudyInstanceUID == ARCHIVED_UID and a.QueryRetrieveLevel == "STUDY" and a.RetrieveAETitle == "GATEKEEPER"
    assert (str(a.PatientName), a.PatientBirthDate, a.PatientSex) == ("DOE^JANE^Q", "19800203", "F")
    assert (a.StudyDate, a.StudyTime, a.AccessionNumber, a.StudyID) == ("20250310", "101500", "ACC1001", "S2001")
    assert a.StudyDescription == "MRI BRAIN W/O CONTRAST" and a.ModalitiesInStudy == "MR"
    assert (int(a.NumberOfStudyRelatedSeries), int(a.NumberOfStudyRelatedInstances)) == (2, 3)
    assert a.SOPClassesInStudy == MRImageStorage


@pytest.mark.parametrize("keys, expected", [
    ({"PatientName": "DOE^JANE*"}, 1),
    ({"PatientName": "DOE^J*"}, 1),  # the held DOE^JOAN is not visible to VIEWER
    ({"StudyDate": "20250301-20250331"}, 1),
    ({"StudyDate": "20250311-"}, 0),
    ({"StudyDate": "-20250309"}, 0),
    ({"AccessionNumber": "ACC100?"}, 1),
    ({"StudyInstanceUID": [HELD_UID, ARCHIVED_UID]}, 1),
    ({"StudyInstanceUID": REJECTED_UID}, 0),
    ({"ModalitiesInStudy": ["CT", "MR"]}, 1),
    ({"ModalitiesInStudy": "CT"}, 0),
])
def test_study_level_key_types(server, studies, keys, expected):
    answers, final = find(server.port, identifier("STUDY", StudyInstanceUID="", **keys) if "StudyInstanceUID" not in keys
                          else identifier("STUDY", **keys))
    assert final == 0x0000 and len(answers) == expected


@pytest.mark.parametrize("calling, expected", [
    ("VIEWER", {ARCHIVED_UID}),
    ("TECH_WS", {ARCHIVED_UID, HELD_UID}),  # held studies for qr.held_viewers; rejected never
])
def test_held_studies_only_for_held_viewers(server, studies, calling, expected):
    answers, _ = find(server.port, identifier("STUDY", StudyInstanceUID=""), calling=calling)
    assert {a.StudyInstanceUID for a in answers} == expected


def test_held_studies_stay_hidden_when_include_held_is_off_and_the_settings_reload(server, studies, app,
                                                                                    settings_path):
    from gateway.settings import load

    ds = identifier("STUDY", StudyInstanceUID="")
    settings_path.write_text(settings_path.read_text().replace("include_held = true", "include_held = false"))
    assert app.reload(load(settings_path, environ={})) == ["qr.include_held"]  # SIGHUP
    assert {a.StudyInstanceUID for a in find(server.port, ds, calling="TECH_WS")[0]} == {ARCHIVED_UID}
    text = settings_path.read_text().replace("include_held = false", "include_held = true")
    settings_path.write_text(text.replace('held_viewers = ["TECH_WS"]', 'held_viewers = ["OTHER_WS"]'))
    assert app.reload(load(settings_path, environ={})) == ["qr.include_held", "qr.held_viewers"]
    assert {a.StudyInstanceUID for a in find(server.port, ds, calling="TECH_WS")[0]} == {ARCHIVED_UID}
    assert {a.StudyInstanceUID for a in find(server.port, ds, calling="OTHER_WS")[0]} == {ARCHIVED_UID, HELD_UID}


def test_series_and_image_levels(server, studies):
    answers, final = find(server.port, identifier("SERIES", StudyInstanceUID=ARCHIVED_UID, SeriesInstanceUID="",
                                                  Modality="", SeriesNumber="", SeriesDescription="",
                                                  NumberOfSeriesRelatedInstances=""))
    assert final == 0x0000
    got = {(a.SeriesInstanceUID, a.Modality, str(a.SeriesNumber), a.SeriesDescription,
            int(a.NumberOfSeriesRelatedInstances)) for a in answers}
    assert got == {(SERIES_1, "MR", "1", "T1 AX", 2), (SERIES_2, "MR", "2", "T2 SAG", 1)}
    assert all(a.StudyInstanceUID == ARCHIVED_UID and a.QueryRetrieveLevel == "SERIES" for a in answers)

    answers, _ = find(server.port, identifier("SERIES", StudyInstanceUID=ARCHIVED_UID, SeriesDescription="T2*"))
    assert [a.SeriesInstanceUID for a in answers] == [SERIES_2]

    answers, _ = find(server.port, identifier("IMAGE", StudyInstanceUID=ARCHIVED_UID, SeriesInstanceUID=SERIES_1,
                                              SOPInstanceUID="", InstanceNumber="", SOPClassUID=""))
    assert sorted(str(a.InstanceNumber) for a in answers) == ["1", "2"]
    assert {a.SOPInstanceUID for a in answers} <= set(studies) and {a.SOPClassUID for a in answers} == {MRImageStorage}

    answers, _ = find(server.port, identifier("IMAGE", StudyInstanceUID=ARCHIVED_UID, SeriesInstanceUID=SERIES_1,
                                              InstanceNumber="2"))
    assert len(answers) == 1


def test_series_of_a_held_study_only_for_held_viewers(server, studies):
    ds = identifier("SERIES", StudyInstanceUID=HELD_UID, SeriesInstanceUID="")
    assert find(server.port, ds)[0] == []
    assert len(find(server.port, ds, calling="TECH_WS")[0]) == 1


def test_patient_root_patient_and_study_levels(server, studies):
    model = PatientRootQueryRetrieveInformationModelFind
    answers, final = find(server.port, identifier("PATIENT", PatientID="", PatientName="",
                                                  NumberOfPatientRelatedStudies="",
                                                  NumberOfPatientRelatedInstances=""), model=model)
    assert final == 0x0000 and len(answers) == 1
    assert (answers[0].PatientID, str(answers[0].PatientName)) == ("MRN5001", "DOE^JANE^Q")
    assert (int(answers[0].NumberOfPatientRelatedStudies), int(answers[0].NumberOfPatientRelatedInstances)) == (1, 3)
    answers, _ = find(server.port, identifier("PATIENT", PatientID="", NumberOfPatientRelatedStudies=""),
                      calling="TECH_WS", model=model)
    assert int(answers[0].NumberOfPatientRelatedStudies) == 2
    answers, _ = find(server.port, identifier("STUDY", PatientID="MRN5001", StudyInstanceUID=""), model=model)
    assert [a.StudyInstanceUID for a in answers] == [ARCHIVED_UID]
    answers, _ = find(server.port, identifier("STUDY", PatientID="OTHER", StudyInstanceUID=""), model=model)
    assert answers == []


@pytest.mark.parametrize("ds", [
    identifier("STUDY", Modality="MR"),  # a key below the level
    identifier("SERIES", Modality="MR"),  # no Study Instance UID above
    identifier("PATIENT", PatientID=""),  # no PATIENT level in Study Root
    identifier("STUDY", StudyDate="last week"),
])
def test_identifiers_the_model_cannot_answer_get_a900(server, studies, ds):
    answers, final = find(server.port, ds)
    assert (answers, final) == ([], 0xA900)
    assert find(server.port, identifier("STUDY", StudyInstanceUID=""))[1] == 0x0000  # still serving


def test_a_failure_while_answering_gets_c000(server, studies, app, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(app.qr, "find", broken)
    assert find(server.port, identifier("STUDY", StudyInstanceUID=""))[1] == 0xC000


def test_c_cancel_stops_the_answers(server, studies, app, monkeypatch):
    real = app.qr.find

    def many(*args, **kwargs):  # 200 answers, paced so that the C-CANCEL arrives while some are left
        for _ in range(200):
            for answer in real(*args, **kwargs):
                time.sleep(0.005)
                yield answer

    monkeypatch.setattr(app.qr, "find", many)
    assoc = associate(server.port, "VIEWER", FIND)
    received, final = 0, None
    for status, _ in assoc.send_c_find(identifier("STUDY", StudyInstanceUID=""), FIND, msg_id=9):
        if status.Status == 0xFF00:
            received += 1
            if received == 3:
                assoc.send_c_cancel(9, query_model=FIND)
        else:
            final = status.Status
    assoc.release()
    assert final == 0xFE00 and 3 <= received < 200


# ------------------------------------------------------------------------- C-MOVE


def move(port: int, ds: Dataset, destination: str = "DEST", calling: str = "VIEWER") -> list[Dataset]:
    assoc = associate(port, calling, MOVE)
    statuses = [status for status, _ in assoc.send_c_move(ds, destination, MOVE)]
    assoc.release()
    return statuses


def test_c_move_sends_the_study_to_the_destination(server, studies, receiver):
    statuses = move(server.port, identifier("STUDY", StudyInstanceUID=ARCHIVED_UID))
    final = statuses[-1]
    assert final.Status == 0x0000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations,
            final.NumberOfWarningSuboperations) == (3, 0, 0)
    pending = [s for s in statuses if s.Status == 0xFF00]
    assert [s.NumberOfRemainingSuboperations for s in pending] == [2, 1, 0]
    got = {ds.SOPInstanceUID: ds for ds in receiver.received}
    assert set(got) == {uid for uid, ds in studies.items() if ds.StudyInstanceUID == ARCHIVED_UID}
    for uid, ds in got.items():
        assert ds.PixelData == studies[uid].PixelData and str(ds.PatientName) == "DOE^JANE^Q"


@pytest.mark.parametrize("ds, count", [
    (identifier("SERIES", StudyInstanceUID=ARCHIVED_UID, SeriesInstanceUID=SERIES_2), 1),
    (identifier("SERIES", StudyInstanceUID=ARCHIVED_UID, SeriesInstanceUID=[SERIES_1, SERIES_2]), 3),
    (identifier("STUDY", StudyInstanceUID=[ARCHIVED_UID, HELD_UID, REJECTED_UID]), 3),  # held, rejected: not visible
    (identifier("STUDY", StudyInstanceUID="1.2.3.4"), 0),
])
def test_c_move_at_each_level(server, studies, receiver, ds, count):
    final = move(server.port, ds)[-1]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == count == len(receiver.received)


def test_c_move_of_an_instance(server, studies, receiver):
    sop = next(uid for uid, ds in studies.items() if ds.SeriesInstanceUID == SERIES_2)
    final = move(server.port, identifier("IMAGE", StudyInstanceUID=ARCHIVED_UID, SeriesInstanceUID=SERIES_2,
                                         SOPInstanceUID=sop))[-1]
    assert final.Status == 0x0000 and [ds.SOPInstanceUID for ds in receiver.received] == [sop]


def test_c_move_of_a_held_study_only_for_held_viewers(server, studies, receiver):
    ds = identifier("STUDY", StudyInstanceUID=HELD_UID)
    assert move(server.port, ds)[-1].NumberOfCompletedSuboperations == 0 and receiver.received == []
    assert move(server.port, ds, calling="TECH_WS")[-1].NumberOfCompletedSuboperations == 1
    assert [d.StudyInstanceUID for d in receiver.received] == [HELD_UID]
    move(server.port, identifier("STUDY", StudyInstanceUID=REJECTED_UID), calling="TECH_WS")
    assert len(receiver.received) == 1


def test_unknown_move_destination_gets_a801(server, studies, receiver):
    statuses = move(server.port, identifier("STUDY", StudyInstanceUID=ARCHIVED_UID), destination="NOBODY")
    assert [s.Status for s in statuses] == [0xA801] and receiver.received == []


def test_a_destination_that_is_down_gets_a801(server, studies, receiver):
    receiver.stop()
    statuses = move(server.port, identifier("STUDY", StudyInstanceUID=ARCHIVED_UID))
    assert statuses[-1].Status == 0xA801


def test_a_retrieval_without_its_unique_key_gets_a900(server, studies, receiver):
    statuses = move(server.port, identifier("STUDY", PatientID="MRN5001"))
    assert statuses[-1].Status == 0xA900 and receiver.received == []


def test_some_sub_operations_failing_gives_b000_with_the_failed_instances(server, studies, receiver, app):
    rows = app.store.index.study_instances(ARCHIVED_UID)
    (app.store.root / rows[0].path).unlink()  # its file is gone
    final = move(server.port, identifier("STUDY", StudyInstanceUID=ARCHIVED_UID))[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
    assert len(receiver.received) == 2


def test_all_sub_operations_failing_gives_a702(server, studies, receiver, app):
    for row in app.store.index.study_instances(ARCHIVED_UID):
        (app.store.root / row.path).unlink()
    final = move(server.port, identifier("STUDY", StudyInstanceUID=ARCHIVED_UID))[-1]
    assert final.Status == 0xA702 and final.NumberOfFailedSuboperations == 3 and receiver.received == []


def test_c_cancel_of_a_move(server, studies, receiver, app, monkeypatch):
    real = app.qr.load

    def slow(instance):
        time.sleep(0.2)
        return real(instance)

    monkeypatch.setattr(app.qr, "load", slow)
    assoc = associate(server.port, "VIEWER", MOVE)
    statuses = []
    for status, _ in assoc.send_c_move(identifier("STUDY", StudyInstanceUID=ARCHIVED_UID), "DEST", MOVE, msg_id=5):
        statuses.append(status)
        if status.Status == 0xFF00 and len(statuses) == 1:
            assoc.send_c_cancel(5, query_model=MOVE)
    assoc.release()
    assert statuses[-1].Status == 0xFE00
    assert statuses[-1].NumberOfRemainingSuboperations >= 1 and len(receiver.received) < 3


# ------------------------------------------------------------------------- C-GET


def get(port: int, ds: Dataset, calling: str = "VIEWER", classes=(MRImageStorage,)):
    received: list[Dataset] = []

    def on_store(event):
        data = event.dataset
        data.file_meta = event.file_meta
        received.append(data)
        return 0x0000

    ae = AE(ae_title=calling)
    ae.add_requested_context(GET)
    for sop_class in classes:
        ae.add_requested_context(sop_class)
    roles = [build_role(sop_class, scp_role=True) for sop_class in classes]
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER", ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    statuses = [status for status, _ in assoc.send_c_get(ds, GET)]
    assoc.release()
    return statuses, received


def test_c_get_delivers_the_files_on_the_same_association(server, studies, app):
    statuses, received = get(server.port, identifier("STUDY", StudyInstanceUID=ARCHIVED_UID))
    final = statuses[-1]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 3
    stored = {r.sop_instance_uid: dcmread(app.store.root / r.path) for r in app.store.index.study_instances(ARCHIVED_UID)}
    assert {ds.SOPInstanceUID for ds in received} == set(stored)
    for ds in received:
        assert ds.PixelData == stored[ds.SOPInstanceUID].PixelData


def test_c_get_of_a_class_the_requester_did_not_negotiate_fails_that_sub_operation(server, studies):
    from pynetdicom.sop_class import CTImageStorage

    statuses, received = get(server.port, identifier("STUDY", StudyInstanceUID=ARCHIVED_UID), classes=(CTImageStorage,))
    final = statuses[-1]
    assert final.Status == 0xA702 and final.NumberOfFailedSuboperations == 3 and received == []


def test_c_get_of_a_held_study_only_for_held_viewers(server, studies):
    ds = identifier("STUDY", StudyInstanceUID=HELD_UID)
    assert get(server.port, ds)[1] == []
    assert [d.StudyInstanceUID for d in get(server.port, ds, calling="TECH_WS")[1]] == [HELD_UID]


def test_c_get_without_its_unique_key_gets_a900(server, studies):
    statuses, received = get(server.port, identifier("SERIES", SeriesInstanceUID=SERIES_1))
    assert statuses[-1].Status == 0xA900 and received == []


# ------------------------------------------------------------------------- corrections


def test_a_corrected_study_is_answered_with_the_corrected_patient(server, studies, app):
    app.store.correct(HELD_UID, user="tech", reason="name typed wrong at the console")
    answers, _ = find(server.port, identifier("STUDY", StudyInstanceUID=HELD_UID, PatientName=""))
    assert [str(a.PatientName) for a in answers] == ["DOE^JANE^Q"]
    assert find(server.port, identifier("STUDY", PatientName="DOE^JOAN", StudyInstanceUID=""), calling="TECH_WS")[0] == []
    statuses, received = get(server.port, identifier("STUDY", StudyInstanceUID=HELD_UID))
    assert [str(d.PatientName) for d in received] == ["DOE^JANE^Q"]


def test_info_lines_carry_uids_never_patient_names(server, studies, receiver, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="gateway.dicom.qr")
    assert find(server.port, identifier("STUDY", PatientName=["DOE^JANE", "DOE^JOAN"]))[1] == 0xA900
    find(server.port, identifier("STUDY", PatientName="DOE^JANE*", StudyInstanceUID=""))
    move(server.port, identifier("STUDY", StudyInstanceUID=ARCHIVED_UID))
    qr_records = [r for r in caplog.records if r.name == "gateway.dicom.qr"]
    infos = [r.getMessage() for r in qr_records if r.levelno == logging.INFO]
    assert any("refused (0xA900)" in line for line in infos)
    assert any(f"studies {ARCHIVED_UID}" in line and "3 of 3 sub-operations" in line for line in infos)
    assert not any("DOE^" in line for line in infos)
    assert any(r.levelno == logging.WARNING and "only UID keys take a list" in r.getMessage() for r in qr_records)


def test_every_storage_context_accepts_the_role_selection_c_get_needs(app):
    from pynetdicom import AllStoragePresentationContexts

    from gateway.dicom.server import build_ae

    ae, handlers = build_ae(app)
    contexts = {c.abstract_syntax: c for c in ae.supported_contexts}
    for storage in AllStoragePresentationContexts:
        context = contexts[storage.abstract_syntax]
        assert (context.scu_role, context.scp_role) == (True, True), storage.abstract_syntax
    assert sum(1 for h in handlers if h[0] is evt.EVT_C_FIND) == 1  # one C-FIND handler routes worklist and Q/R


def test_move_destinations_are_the_peers_then_the_forward_destinations(tmp_path):
    """One lookup (gateway/destinations.py): [peers] by AE title first, then [forward.NAME] by its ae_title."""
    from gateway.destinations import move_destination
    from gateway.settings import load
    from tests.conftest import write_settings

    path = write_settings(tmp_path)
    path.write_text(path.read_text().replace("[peers]\n", '[peers]\nVIEWER = { host = "127.0.0.2", port = 104 }\n'
                                             'PACS = { host = "127.0.0.3", port = 105 }\n', 1)
                    + '\n[forward.ARCHIVE]\nae_title = "PACS"\nhost = "127.0.0.4"\nport = 4242\n'
                    + '\n[forward.VNA]\nae_title = "VNA"\nhost = "127.0.0.5"\nport = 11113\n')
    settings = load(path, environ={})
    assert (move_destination(settings, "VIEWER").host, move_destination(settings, "VIEWER").port) == ("127.0.0.2", 104)
    assert move_destination(settings, "PACS").host == "127.0.0.3"  # [peers] wins over a destination's AE title
    found = move_destination(settings, " VNA ")
    assert (found.ae_title, found.host, found.port) == ("VNA", "127.0.0.5", 11113)
    assert move_destination(settings, "ARCHIVE") is None  # the table's name is not an AE title
    assert move_destination(settings, "") is None and move_destination(settings, "NOBODY") is None
