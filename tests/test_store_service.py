"""The store (rules 3, 4 and 5 of docs/rules.md) with a real database and storage root, no network.

Instances come from ``tests.dicom_factory``: patient MRN5001 DOE^JANE^Q 19800203 F,
accession ACC1001, MR, study date 2025-03-10. The order fixture matches them, under a
payer policy that needs an auth for CPT 70551, with an auth valid that day.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from infra.audit import AuditEvent
from infra.errors import InvalidInput, NotFound, OutOfResources, Refused, StorageFailure, Undecodable, WrongState
from store import review
from store.index import MOVE
from store.models import FindingRow, InstanceRow, StudyRow
from store.receiving import INFLIGHT, DatasetMismatch, Session
from store.reconcile import CODES
from store.review import AUDIT_CORRECTED, AUDIT_REJECTED, AUDIT_RELEASED
from store.states import ARCHIVED, HELD, REJECTED
from store.store import Store, StoreConfig
from tests.dicom_factory import make_instance, make_order, write_instance
from worklist.models import OrderRow
from worklist.orders import Auth

STUDY = "1.2.826.0.1.3680043.8.498.1001"


def auth(**overrides) -> Auth:
    values = dict(auth_number="PA-1", payer_id="ACME", patient_id="MRN5001", cpt_codes=("70551",),
                  facility_npi="1245319599", ordering_npi="1234567893", valid_from=dt.date(2025, 3, 1),
                  valid_to=dt.date(2025, 3, 31), units=1, units_used=0)
    values.update(overrides)
    return Auth(**values)


@pytest.fixture
def store(app):
    app.gate.import_orders([make_order(study_instance_uid=STUDY)])
    app.gate.import_auths([auth()])
    return app.store


def restart(app, store) -> Store:
    """The process dies (its incoming folder and lock are left behind) and a new one starts."""
    os.close(store.archive._own_lock)
    store.archive._own = None
    return Store(app.db, store.config, app.gate, app.now)


def send(store, tmp_path, calling="MR1", session=None, **overrides):
    """Write an instance of STUDY (keyword overrides) and receive it; (dataset, result)."""
    overrides.setdefault("StudyInstanceUID", STUDY)
    ds = make_instance(**overrides)
    path = write_instance(tmp_path / "sent" / f"{ds.SOPInstanceUID}.dcm", ds)
    return ds, store.receive(path, calling, session=session)


def files(store, tree):
    return sorted((store.root / tree).rglob("*.dcm"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------- filing


def test_matching_instance_is_archived_and_indexed(store, tmp_path):
    ds, received = send(store, tmp_path)
    assert (received.state, received.hold_codes, received.warn_codes) == (ARCHIVED, (), ())
    stored = store.root / received.stored.path
    assert stored == store.archive.path_of("archive", STUDY, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert stored.read_bytes() == (tmp_path / "sent" / f"{ds.SOPInstanceUID}.dcm").read_bytes()
    row = InstanceRow.get(InstanceRow.sop_instance_uid == ds.SOPInstanceUID)
    assert (row.path, row.size, row.sha256) == (str(received.stored.path), stored.stat().st_size, sha256(stored))
    assert (row.received_from, row.sop_class_uid, row.transfer_syntax_uid) == ("MR1", ds.SOPClassUID, "1.2.840.10008.1.2.1")
    study = StudyRow.get(StudyRow.study_instance_uid == STUDY)
    assert (study.state, study.accession_number, study.order_accession, study.instance_count) == (ARCHIVED, "ACC1001", "ACC1001", 1)
    assert study.held_at is None and study.pending_files is None
    assert FindingRow.select().count() == 0
    assert (tmp_path / "sent" / f"{ds.SOPInstanceUID}.dcm").exists()  # a file outside incoming/ is copied
    assert list(store.archive.incoming.iterdir()) == []


@pytest.mark.parametrize("overrides, code, instance_value, order_value", [
    ({"PatientBirthDate": "19800302"}, "BIRTH_DATE_MISMATCH", "19800302", "19800203"),
    ({"PatientID": "MRN9999"}, "PATIENT_ID_MISMATCH", "MRN9999", "MRN5001"),
    ({"PatientName": "DOE^JOHN"}, "PATIENT_NAME_MISMATCH", "DOE^JOHN", "DOE^JANE^Q"),
    ({"PatientSex": "M"}, "SEX_MISMATCH", "M", "F"),
    ({"Modality": "CT"}, "MODALITY_MISMATCH", "CT", "MR"),
    ({"AccessionNumber": "ACC404"}, "ACCESSION_UNKNOWN", "ACC404", ""),
    ({"AccessionNumber": ""}, "ACCESSION_MISSING", "", ""),
])
def test_mismatch_is_held_with_its_code_and_both_values(store, tmp_path, overrides, code, instance_value, order_value):
    ds, received = send(store, tmp_path, **overrides)
    assert received.state == HELD and received.hold_codes == (code,)
    assert files(store, "archive") == [] and len(files(store, "held")) == 1
    finding = FindingRow.get(FindingRow.sop_instance_uid == ds.SOPInstanceUID)
    assert (finding.code, finding.instance_value, finding.order_value, finding.holds) == (code, instance_value, order_value, True)
    study = StudyRow.get(StudyRow.study_instance_uid == STUDY)
    assert study.state == HELD and study.held_at == store.clock()
    assert [(h.study_instance_uid, h.codes) for h in store.held_studies()] == [(STUDY, (code,))]


def test_a_warning_code_is_recorded_but_does_not_hold(store, tmp_path):
    _, received = send(store, tmp_path, StudyInstanceUID=generate_uid())
    assert received.state == ARCHIVED and received.warn_codes == ("STUDY_UID_MISMATCH",)
    assert [(f.code, f.holds) for f in FindingRow.select()] == [("STUDY_UID_MISMATCH", False)]


def test_every_code_holds_when_no_code_is_a_warning(app, store, tmp_path):
    strict = Store(app.db, StoreConfig(store.root, ae_title="GK", hold_codes=frozenset(CODES)), app.gate, app.now)
    _, received = send(strict, tmp_path, StudyInstanceUID=generate_uid())
    assert received.state == HELD and received.hold_codes == ("STUDY_UID_MISMATCH",)


# ------------------------------------------------------------------- authorization


def test_no_valid_auth_on_the_study_date_holds(app, store, tmp_path):
    _, received = send(store, tmp_path, StudyDate="20250401")  # auth ends 2025-03-31
    assert received.hold_codes == ("ORDER_NOT_AUTHORIZED",)
    assert FindingRow.get().instance_value == "20250401" and FindingRow.get().order_value == "70551"


def test_an_empty_study_date_is_judged_on_the_receive_date(app, store, tmp_path):
    app.clock.now = dt.datetime(2025, 3, 15, 9, 0)
    assert send(store, tmp_path, StudyDate="")[1].state == ARCHIVED
    app.clock.now = dt.datetime(2025, 4, 15, 9, 0)
    held = send(store, tmp_path, StudyInstanceUID=generate_uid(), StudyDate="")[1]
    assert held.hold_codes == ("ORDER_NOT_AUTHORIZED", "DUPLICATE_STUDY")  # a second study of the order, too


def test_the_orders_own_used_unit_is_not_an_exhausted_auth(app, store, tmp_path):
    app.gate.import_auths([auth(units_used=1)])
    _, received = send(store, tmp_path)
    assert received.hold_codes == ("ORDER_NOT_AUTHORIZED",)  # the unit went to another exam
    OrderRow.update(auth_unit_used="PA-1", status="completed").execute()
    _, received = send(store, tmp_path, StudyInstanceUID=generate_uid())
    assert received.hold_codes == ()  # completed order, its own unit: normal


def test_an_override_or_a_payer_without_auth_needs_authorizes(app, store, tmp_path):
    app.gate.import_auths([auth(status="denied")])
    assert send(store, tmp_path)[1].hold_codes == ("ORDER_NOT_AUTHORIZED",)
    app.gate.override("ACC1001", user="dr.who", reason="stroke protocol")
    assert send(store, tmp_path, StudyInstanceUID=generate_uid())[1].hold_codes == ()
    app.gate.import_orders([make_order(accession_number="ACC2", payer_id="SELF_PAY", study_instance_uid="1.2.3.2")])
    assert send(store, tmp_path, StudyInstanceUID="1.2.3.2", AccessionNumber="ACC2")[1].hold_codes == ()


def test_a_cancelled_order_holds(app, store, tmp_path):
    OrderRow.update(status="cancelled").execute()
    assert send(store, tmp_path)[1].hold_codes == ("ORDER_CANCELLED",)


def test_a_session_looks_an_accession_up_once_and_a_new_session_sees_changes(app, store, tmp_path, monkeypatch):
    calls = []
    real = store.receiving.authorizer
    monkeypatch.setattr(store.receiving, "authorizer", lambda acc, day: calls.append(acc) or real(acc, day))
    app.gate.import_auths([auth(status="denied")])
    session = Session()
    assert send(store, tmp_path, session=session)[1].hold_codes == ("ORDER_NOT_AUTHORIZED",)
    app.gate.override("ACC1001", user="dr.who", reason="urgent")
    # the same association keeps its decision ...
    assert send(store, tmp_path, session=session, StudyInstanceUID="1.2.3.9")[1].state == HELD
    assert calls == ["ACC1001"]
    # ... the next one looks again
    assert send(store, tmp_path, session=Session(), StudyInstanceUID="1.2.3.10")[1].hold_codes == ()
    assert calls == ["ACC1001", "ACC1001"]


# ---------------------------------------------------------------- the study is the unit


def test_one_held_instance_holds_the_whole_study(store, tmp_path):
    first, received = send(store, tmp_path)
    assert received.state == ARCHIVED
    bad, received = send(store, tmp_path, PatientBirthDate="19800302", SeriesInstanceUID=first.SeriesInstanceUID)
    assert received.state == HELD and received.moved == 1
    later, received = send(store, tmp_path)  # matches its order, but its study is held
    assert received.state == HELD and received.hold_codes == ()
    assert files(store, "archive") == []
    assert {p.stem for p in files(store, "held")} == {first.SOPInstanceUID, bad.SOPInstanceUID, later.SOPInstanceUID}
    for row in InstanceRow.select():
        assert row.path.startswith("held/") and (store.root / row.path).is_file()
    study = StudyRow.get()
    assert (study.state, study.instance_count, study.pending_files) == (HELD, 3, None)
    assert [h.codes for h in store.held_studies()] == [("BIRTH_DATE_MISMATCH",)]


def test_held_list_is_oldest_first(app, store, tmp_path):
    send(store, tmp_path, StudyInstanceUID="1.2.3.1", PatientSex="M")
    app.clock.now -= dt.timedelta(hours=5)
    send(store, tmp_path, StudyInstanceUID="1.2.3.2", PatientBirthDate="")
    assert [(h.study_instance_uid, h.codes) for h in store.held_studies()] == [
        ("1.2.3.2", ("BIRTH_DATE_MISMATCH",)), ("1.2.3.1", ("SEX_MISMATCH",))]


# ------------------------------------------------------------------------ re-sending


def test_a_resent_instance_replaces_the_file_without_a_second_row(store, tmp_path):
    ds, first = send(store, tmp_path)
    path = write_instance(tmp_path / "again.dcm", ds)
    again = store.receive(path, "MR1")
    assert again.replaced and again.stored == first.stored
    assert InstanceRow.select().count() == 1 and len(files(store, "archive")) == 1
    assert StudyRow.get().instance_count == 1
    ds.PatientBirthDate = "19800302"  # the modality re-sends a changed copy: the latest wins
    changed = store.receive(write_instance(tmp_path / "changed.dcm", ds), "MR1")
    assert changed.state == HELD
    assert InstanceRow.select().count() == 1 and FindingRow.select().count() == 1
    row = InstanceRow.get()
    assert row.sha256 == sha256(store.root / row.path) != first.stored.sha256
    assert files(store, "archive") == [] and len(files(store, "held")) == 1
    assert StudyRow.get().instance_count == 1


# --------------------------------------------------------------------------- failures


def test_a_write_failure_leaves_nothing_and_says_out_of_resources(store, tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutOfResources):
        send(store, tmp_path)
    monkeypatch.undo()
    assert files(store, "archive") == files(store, "held") == []
    assert list(store.archive.incoming.iterdir()) == []
    assert InstanceRow.select().count() == StudyRow.select().count() == 0


def test_a_received_file_is_fsynced_before_it_is_renamed_into_its_tree(store, tmp_path, monkeypatch):
    """Rule 4: the fsync runs while the header is read, and the rename waits for it, however slow."""
    ds = make_instance(StudyInstanceUID=STUDY)
    received = write_instance(store.archive.new_incoming(), ds)  # as pynetdicom leaves it
    inode = received.stat().st_ino
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def slow_fsync(fd):
        if os.fstat(fd).st_ino == inode:
            time.sleep(0.2)
            events.append("file fsynced")
        real_fsync(fd)

    def replace(src, dst):
        if Path(src) == received:
            events.append("renamed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    monkeypatch.setattr(os, "replace", replace)
    result = store.receive(received, "MR1")
    assert events == ["file fsynced", "renamed"]
    assert (store.root / result.stored.path).stat().st_ino == inode  # renamed, not copied
    assert list(store.archive.incoming.iterdir()) == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_an_unreadable_received_file_is_removed_once_its_fsync_is_over(store, monkeypatch):
    received = store.archive.new_incoming()
    received.write_bytes(b"not dicom at all" * 10)
    inode = received.stat().st_ino
    real_fsync, synced = os.fsync, []

    def slow_fsync(fd):
        if os.fstat(fd).st_ino == inode:
            time.sleep(0.2)
            synced.append(received.exists())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    with pytest.raises(Undecodable):
        store.receive(received, "MR1")
    # the fsync was either cancelled before it started, or had the file until it was over
    assert synced in ([], [True]) and not received.exists()
    assert list(store.archive.incoming.iterdir()) == [] and InstanceRow.select().count() == 0


def test_an_index_failure_takes_the_file_back_out(store, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(store.index, "record_instance", broken)
    with pytest.raises(StorageFailure, match="database is locked"):
        send(store, tmp_path)
    assert files(store, "archive") == [] and list(store.archive.incoming.iterdir()) == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_an_unreadable_file_cannot_be_processed(store, tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 10)
    with pytest.raises(Undecodable):
        store.receive(junk, "MR1")
    with pytest.raises(Undecodable, match="malformed"):
        send(store, tmp_path, SeriesInstanceUID="1.2.x")


def test_the_dataset_must_be_the_instance_the_request_names(store, tmp_path):
    ds = make_instance(StudyInstanceUID=STUDY)
    path = write_instance(tmp_path / "x.dcm", ds)
    with pytest.raises(DatasetMismatch):
        store.receive(path, "MR1", sop_instance_uid="1.2.3.4", sop_class_uid=ds.SOPClassUID)
    assert InstanceRow.select().count() == 0


# -------------------------------------------------------------------- review actions


def held_study(store, tmp_path, count=2, **overrides):
    overrides.setdefault("PatientBirthDate", "19800302")
    sent = [send(store, tmp_path, **overrides)[0] for _ in range(count)]
    assert StudyRow.get(StudyRow.study_instance_uid == STUDY).state == HELD
    return sent


def audit_rows(action):
    return [(e.user, e.action, e.subject, e.reason, json.loads(e.detail))
            for e in AuditEvent.select().where(AuditEvent.action == action)]


def test_release_archives_the_study_as_it_is(app, store, tmp_path):
    sent = held_study(store, tmp_path)
    before = {p.name: p.read_bytes() for p in files(store, "held")}
    result = store.release(STUDY, user="tech.anna", reason="birth date confirmed with patient")
    assert (result.state, result.instances) == (ARCHIVED, 2)
    assert files(store, "held") == [] and {p.name: p.read_bytes() for p in files(store, "archive")} == before
    study = StudyRow.get()
    assert (study.state, study.state_changed_at, study.pending_files) == (ARCHIVED, app.now(), None)
    assert study.held_at is not None  # kept for the held-time figures
    assert all(r.path.startswith("archive/") for r in InstanceRow.select())
    [(user, _, subject, reason, detail)] = audit_rows(AUDIT_RELEASED)
    assert (user, subject, reason) == ("tech.anna", STUDY, "birth date confirmed with patient")
    assert detail["codes"] == ["BIRTH_DATE_MISMATCH"] and detail["instances"] == len(sent)


def test_reject_moves_the_study_to_rejected_and_stamps_the_time(app, store, tmp_path):
    held_study(store, tmp_path)
    app.clock.now += dt.timedelta(hours=2)
    result = store.reject(STUDY, user="tech.anna", reason="test images sent by mistake")
    assert result.state == REJECTED
    assert files(store, "held") == [] and len(files(store, "rejected")) == 2
    assert StudyRow.get().state_changed_at == app.now()
    assert [a[1] for a in audit_rows(AUDIT_REJECTED)] == [AUDIT_REJECTED]


def test_correct_sets_the_orders_values_and_keeps_the_originals(app, store, tmp_path):
    sent = held_study(store, tmp_path, PatientBirthDate="19800302", PatientName="DOE^JAIN")
    result = store.correct(STUDY, user="tech.anna", reason="typo at the console")
    assert (result.state, result.instances, result.changed) == (ARCHIVED, 2, ("PatientBirthDate", "PatientName"))
    assert result.remaining_codes == ()
    assert files(store, "held") == [] and len(files(store, "archive")) == 2
    for ds in sent:
        row = InstanceRow.get(InstanceRow.sop_instance_uid == ds.SOPInstanceUID)
        path = store.root / row.path
        assert row.path.startswith("archive/") and (row.size, row.sha256) == (path.stat().st_size, sha256(path))
        corrected = dcmread(path)
        assert (corrected.PatientBirthDate, str(corrected.PatientName)) == ("19800203", "DOE^JANE^Q")
        assert corrected.SOPInstanceUID == ds.SOPInstanceUID and corrected.PixelData == ds.PixelData
        assert corrected.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        [item] = corrected.OriginalAttributesSequence
        assert item.ReasonForTheAttributeModification == "CORRECT"
        assert item.ModifyingSystem == app.settings.ae_title and item.SourceOfPreviousValues == "MR1"
        previous = item.ModifiedAttributesSequence[0]
        assert (previous.PatientBirthDate, str(previous.PatientName)) == ("19800302", "DOE^JAIN")
    [(user, _, _, reason, detail)] = audit_rows(AUDIT_CORRECTED)
    assert (user, reason, detail["changed"], detail["instances"]) == ("tech.anna", "typo at the console",
                                                                     ["PatientBirthDate", "PatientName"], 2)
    assert StudyRow.get().state == ARCHIVED and list(store.archive.incoming.iterdir()) == []


def test_correct_can_reassign_the_study_to_another_order(app, store, tmp_path):
    app.gate.import_orders([make_order(accession_number="ACC2", patient_id="MRN7", patient_name="ROE^RICHARD",
                              birth_date=dt.date(1955, 7, 19), sex="M", payer_id="SELF_PAY")])
    held_study(store, tmp_path, AccessionNumber="ACC404")
    with pytest.raises(Refused, match="--patient-change"):
        store.correct(STUDY, user="tech.anna", reason="wrong order picked", accession="ACC2")
    assert StudyRow.get().state == HELD and files(store, "archive") == []
    result = store.correct(STUDY, user="tech.anna", reason="wrong order picked", accession="ACC2",
                           patient_change=True)
    assert result.accession_number == "ACC2"
    ds = dcmread(files(store, "archive")[0])
    assert (ds.AccessionNumber, ds.PatientID, ds.PatientSex) == ("ACC2", "MRN7", "M")
    assert ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].AccessionNumber == "ACC404"
    study = StudyRow.get()
    assert (study.accession_number, study.order_accession) == ("ACC2", "ACC2")
    assert [s.order.accession_number for s in store.archived_studies("ACC2")] == ["ACC2"]
    [(user, _, _, reason, detail)] = audit_rows(AUDIT_CORRECTED)
    assert detail["patient_change"] is True and detail["previous_patient_id"] == "MRN5001"


def test_images_are_never_moved_onto_another_patients_exam_of_another_modality(app, store, tmp_path):
    app.gate.import_orders([make_order(accession_number="ACC3", patient_id="MRN7", patient_name="ROE^RICHARD",
                                       cpt="71046", modality="DX", payer_id="SELF_PAY")])
    held_study(store, tmp_path, PatientID="MRN9")  # its own order ACC1001 is patient MRN5001's MR
    for confirmed in (False, True):
        with pytest.raises(Refused, match="another modality"):
            store.correct(STUDY, user="u", reason="r", accession="ACC3", patient_change=confirmed)
    assert StudyRow.get().state == HELD and files(store, "archive") == []
    assert audit_rows(AUDIT_CORRECTED) == []


def test_reassigning_to_another_order_of_the_same_patient_needs_no_confirmation(app, store, tmp_path):
    app.gate.import_orders([make_order(accession_number="ACC5", payer_id="SELF_PAY")])  # same patient MRN5001
    held_study(store, tmp_path, PatientSex="M")
    assert store.correct(STUDY, user="u", reason="other order of hers", accession="ACC5").accession_number == "ACC5"


def test_after_a_correction_findings_describe_the_files_as_they_are(app, store, tmp_path):
    held_study(store, tmp_path, count=1, PatientName="DOE^JANNE")
    store.correct(STUDY, user="u", reason="typo at the console")
    assert FindingRow.select().count() == 0  # the corrected file matches its order
    send(store, tmp_path, PatientSex="M")  # a later instance with another problem
    [held] = store.held_studies()
    assert held.codes == ("SEX_MISMATCH",)
    assert [f.code for f in store.held_study(STUDY).findings] == ["SEX_MISMATCH"]


def test_a_correction_keeps_what_it_could_not_fix_as_findings(store, tmp_path):
    held_study(store, tmp_path, count=1, Modality="CT", PatientSex="M")
    store.correct(STUDY, user="u", reason="r")
    assert [(f.code, f.instance_value) for f in FindingRow.select()] == [("MODALITY_MISMATCH", "CT")]


def test_an_archived_study_held_again_says_so(app, store, tmp_path, caplog):
    send(store, tmp_path)
    assert StudyRow.get().state == ARCHIVED
    with caplog.at_level(logging.WARNING, logger="store.receiving"):
        _, received = send(store, tmp_path, PatientID="MRN9999", calling="CT9")
    assert received.state == HELD and received.moved == 1
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert STUDY in warning and "held again" in warning and "PATIENT_ID_MISMATCH" in warning
    assert "MRN9999" not in warning  # no patient identifiers in the log
    [(user, _, subject, _, detail)] = audit_rows("study.reopened")
    assert (user, subject, detail["codes"]) == ("CT9", STUDY, ["PATIENT_ID_MISMATCH"])
    [held] = store.held_studies()
    assert held.reopened
    assert store.report(app.today() - dt.timedelta(days=30)).reopened == 1
    store.release(STUDY, user="u", reason="checked")
    held_again = send(store, tmp_path, PatientSex="M")[1]
    assert held_again.state == HELD and store.held_studies()[0].reopened


def test_a_study_held_from_its_first_instance_is_not_reopened(store, tmp_path):
    send(store, tmp_path, PatientID="MRN9999")
    send(store, tmp_path, PatientSex="M")
    [held] = store.held_studies()
    assert not held.reopened and audit_rows("study.reopened") == []


def test_correct_reports_what_it_cannot_fix(app, store, tmp_path):
    held_study(store, tmp_path, count=1, Modality="CT", PatientSex="M", PatientBirthDate="19800203")
    result = store.correct(STUDY, user="u", reason="r")
    assert result.changed == ("PatientSex",) and result.remaining_codes == ("MODALITY_MISMATCH",)


@pytest.mark.parametrize("action", ["release", "reject", "correct"])
def test_actions_on_an_unknown_or_archived_study_are_refused_and_change_nothing(store, tmp_path, action):
    with pytest.raises(NotFound, match="no study"):
        getattr(store, action)("1.2.3.404", user="u", reason="r")
    send(store, tmp_path)
    with pytest.raises(WrongState, match="archived, not held"):
        getattr(store, action)(STUDY, user="u", reason="r")
    assert StudyRow.get().state == ARCHIVED and len(files(store, "archive")) == 1
    assert AuditEvent.select().where(AuditEvent.subject == STUDY).count() == 0


def test_actions_need_a_user_and_a_reason(store, tmp_path):
    held_study(store, tmp_path, count=1)
    with pytest.raises(InvalidInput, match="--user"):
        store.release(STUDY, user="", reason="r")
    with pytest.raises(InvalidInput, match="--reason"):
        store.reject(STUDY, user="u", reason="  ")
    assert StudyRow.get().state == HELD


def test_correct_without_an_order_is_refused(store, tmp_path):
    held_study(store, tmp_path, count=1, AccessionNumber="")
    with pytest.raises(InvalidInput, match="--accession"):
        store.correct(STUDY, user="u", reason="r")
    with pytest.raises(NotFound, match="ACC999"):
        store.correct(STUDY, user="u", reason="r", accession="ACC999")
    assert StudyRow.get().state == HELD and len(files(store, "held")) == 1 and files(store, "archive") == []


def test_a_failed_correction_changes_nothing(store, tmp_path, monkeypatch):
    held_study(store, tmp_path)
    before = {p: p.read_bytes() for p in files(store, "held")}
    real = store.archive.write_new
    calls = []

    def second_fails(*args):
        calls.append(args)
        if len(calls) == 2:
            raise OutOfResources("disk full")
        return real(*args)

    monkeypatch.setattr(store.archive, "write_new", second_fails)
    with pytest.raises(OutOfResources, match="still held"):
        store.correct(STUDY, user="u", reason="r")
    assert {p: p.read_bytes() for p in files(store, "held")} == before
    assert files(store, "archive") == [] and list(store.archive.incoming.iterdir()) == []
    study = StudyRow.get()
    assert (study.state, study.pending_files) == (HELD, None)
    assert all(r.path.startswith("held/") for r in InstanceRow.select())


def test_archived_studies_come_with_their_order(store, tmp_path):
    send(store, tmp_path)
    send(store, tmp_path, StudyInstanceUID="1.2.3.5", PatientSex="M")
    [study] = store.archived_studies()
    assert (study.study_instance_uid, study.instance_count, study.order.cpt) == (STUDY, 1, "70551")
    assert store.archived_studies("ACC404") == []


# ---------------------------------------------------------------- crash and recovery


class Crash(BaseException):
    """Stands for the process dying: nothing catches it."""


def test_a_crash_between_filing_and_indexing_is_repaired_at_start(app, store, tmp_path, monkeypatch):
    monkeypatch.setattr(store.index, "record_instance", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        send(store, tmp_path)
    monkeypatch.undo()
    [placed] = files(store, "archive")
    assert InstanceRow.select().count() == 0  # written, not indexed, not acknowledged
    assert [p.name.startswith(INFLIGHT) for p in store.archive.incoming.iterdir()] == [True]
    store = restart(app, store)
    done = store.recover()
    assert done.refiled == (placed.stem,)
    row = InstanceRow.get()
    assert (store.root / row.path) == placed and row.sha256 == sha256(placed)
    assert StudyRow.get().state == ARCHIVED and list(store.archive.incoming.iterdir()) == []


def test_recovery_removes_partial_files_and_keeps_indexed_ones(app, store, tmp_path):
    ds, received = send(store, tmp_path)
    (store.archive.incoming / "rx-partial.dcm").write_bytes(b"\0" * 300)
    # a link left after the index committed (crash just before it was removed)
    os.link(store.root / received.stored.path, store.archive.incoming / (INFLIGHT + "rx-done.dcm"))
    store = restart(app, store)
    done = store.recover()
    assert (done.refiled, done.leftovers) == ((), 1)
    assert list(store.archive.incoming.iterdir()) == [] and InstanceRow.select().count() == 1
    assert (store.root / received.stored.path).is_file()


def test_a_crash_in_the_middle_of_a_release_is_finished_at_start(app, store, tmp_path, monkeypatch):
    held_study(store, tmp_path, count=3)
    monkeypatch.setattr(store.placement, "settle_or_log", lambda study: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        store.release(STUDY, user="u", reason="r")
    monkeypatch.undo()
    # one file had been moved when the process died
    first = files(store, "held")[0]
    os.makedirs(store.root / "archive" / STUDY / first.parent.name, exist_ok=True)
    os.replace(first, store.root / "archive" / STUDY / first.parent.name / first.name)
    assert StudyRow.get().pending_files == MOVE
    store = restart(app, store)
    assert store.recover().settled == (STUDY,)
    assert files(store, "held") == [] and len(files(store, "archive")) == 3
    assert all((store.root / r.path).is_file() for r in InstanceRow.select())
    assert StudyRow.get().pending_files is None


def test_a_crash_before_a_correction_switches_the_index_leaves_the_study_held(app, store, tmp_path, monkeypatch):
    held_study(store, tmp_path)
    originals = {p: p.read_bytes() for p in files(store, "held")}
    monkeypatch.setattr(review.audit, "record", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        store.correct(STUDY, user="u", reason="r")
    monkeypatch.undo()
    assert len(files(store, "archive")) == 2  # corrected copies in place, index not switched
    store = restart(app, store)
    store.recover()
    assert files(store, "archive") == [] and {p: p.read_bytes() for p in files(store, "held")} == originals
    assert StudyRow.get().state == HELD and StudyRow.get().pending_files is None
    assert AuditEvent.select().where(AuditEvent.action == AUDIT_CORRECTED).count() == 0
