"""``gatekeeper held recheck``: a held study checked again against its order after the RIS
corrected the patient (ADT^A08), released only when nothing holds it any more."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.app import MODELS
from gateway.hl7.listener import Receiver
from infra.db import bind
from infra.audit import AuditEvent
from infra.errors import InvalidInput, NotFound, WrongState
from store.review import AUDIT_RECHECKED
from store.states import ARCHIVED, HELD
from tests.dicom_factory import make_instance, make_order, write_instance
from tests.test_store_service import STUDY, auth

A08 = ("MSH|^~\\&|RIS|NORTHSIDE|GATEKEEPER|NORTHSIDE|20250310110000||ADT^A08|{cid}|P|2.3.1\r"
       "EVN|A08|20250310110000\r"
       "PID|1||MRN5001^^^NORTHSIDE||{name}||{birth}|F\r")


@pytest.fixture
def held(app, tmp_path):
    """A study held because the RIS had the birth date wrong (the images say 1980-02-03)."""
    app.gate.import_orders([make_order(study_instance_uid=STUDY, birth_date=dt.date(1980, 3, 2))])
    app.gate.import_auths([auth()])
    ds = make_instance(StudyInstanceUID=STUDY)
    received = app.store.receive(write_instance(tmp_path / "sent" / "1.dcm", ds), "MR1")
    assert received.state == HELD and received.hold_codes == ("BIRTH_DATE_MISMATCH",)
    return app.store


def a08(app, cid: str, name: str = "DOE^JANE^Q", birth: str = "19800203") -> None:
    ack = Receiver(app).answer(A08.format(cid=cid, name=name, birth=birth).encode())
    assert b"MSA|AA|" in ack


def test_a_patient_update_does_not_release_by_itself(app, held):
    a08(app, "C1")
    assert app.store.index.study_row(STUDY).state == HELD


def test_recheck_after_the_update_releases_the_study(app, held):
    a08(app, "C1")
    result = held.recheck(STUDY, user="tech1", reason="RIS corrected the birth date")
    assert (result.state, result.remaining_codes) == (ARCHIVED, ())
    assert app.store.index.study_row(STUDY).state == ARCHIVED
    assert list((held.root / "archive").rglob("*.dcm")) and not list((held.root / "held").rglob("*.dcm"))
    event = AuditEvent.get(AuditEvent.action == AUDIT_RECHECKED)
    assert (event.subject, event.user) == (STUDY, "tech1")
    assert '"released": true' in event.detail and "BIRTH_DATE_MISMATCH" in event.detail


def test_recheck_before_the_update_says_what_still_holds(app, held):
    result = held.recheck(STUDY, user="tech1", reason="checking")
    assert (result.state, result.remaining_codes) == (HELD, ("BIRTH_DATE_MISMATCH",))
    assert app.store.index.study_row(STUDY).state == HELD and list((held.root / "held").rglob("*.dcm"))
    assert '"released": false' in AuditEvent.get(AuditEvent.action == AUDIT_RECHECKED).detail


def test_an_update_that_fixes_one_finding_of_two_keeps_the_study_held(app, held):
    a08(app, "C1", name="DOE^JOAN")  # the birth date is right now, the name no longer is
    result = held.recheck(STUDY, user="tech1", reason="after the RIS update")
    assert (result.state, result.remaining_codes) == (HELD, ("PATIENT_NAME_MISMATCH",))
    assert app.store.held_study(STUDY).study.codes == ("PATIENT_NAME_MISMATCH",)  # the findings are the recheck's


def test_recheck_needs_who_and_why_and_a_held_study(app, held):
    with pytest.raises(InvalidInput):
        held.recheck(STUDY, user="", reason="x")
    with pytest.raises(NotFound):
        held.recheck("1.2.3.4", user="tech1", reason="x")
    a08(app, "C1")
    held.recheck(STUDY, user="tech1", reason="x")
    with pytest.raises(WrongState):
        held.recheck(STUDY, user="tech1", reason="again")


def test_the_command(app, held, run):
    code, out, err = run("held", "recheck", STUDY, "--user", "tech1", "--reason", "checking")
    assert code == 1 and "still held for BIRTH_DATE_MISMATCH" in out
    bind(app.db, MODELS)  # the command bound the models to its own database handle
    a08(app, "C1")
    code, out, err = run("held", "recheck", "ACC1001", "--user", "tech1", "--reason", "RIS fixed it")
    assert code == 0 and "nothing holds it; released and archived" in out

