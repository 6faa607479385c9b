"""Orders without MPPS completed from their images (rule 6) and the report and timely-filing watch
(rule 7): the pure rules, then the jobs with a controlled clock."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from dataclasses import replace

import pytest
from pydicom.uid import generate_uid

from gateway import jobs
from gateway.cli.main import main
from infra.audit import AuditEvent
from infra.errors import InvalidInput
from store import watch
from store.states import ARCHIVED, HELD
from tests.conftest import import_auths, import_orders
from tests.dicom_factory import make_instance, write_instance
from worklist import mpps
from worklist.models import AuthRow, OrderRow
from worklist.orders import Auth, Order
from worklist.policy import PayerTerms, parse_policy

UID = "1.2.826.0.1.3680043.8.498.5001"
ORDER = Order(
    accession_number="ACC1", patient_id="MRN1", patient_name="DOE^JANE", birth_date=dt.date(1980, 2, 3),
    cpt="70553", modality="MR", scheduled_start=dt.datetime(2026, 12, 1, 9, 30), station_ae="MR1",
    ordering_npi="1234567893", facility_npi="1987654328", payer_id="ACME", study_instance_uid=UID,
)
AUTH = Auth(
    auth_number="PA-1", payer_id="ACME", patient_id="MRN1", cpt_codes=("70553",),
    facility_npi="1987654328", ordering_npi="1234567893",
    valid_from=dt.date(2026, 11, 20), valid_to=dt.date(2026, 12, 20), units=2,
)
ARRIVED = dt.datetime(2026, 12, 1, 10, 0)


def events(action: str, subject: str | None = None) -> list[AuditEvent]:
    query = AuditEvent.select().where(AuditEvent.action == action)
    if subject is not None:
        query = query.where(AuditEvent.subject == subject)
    return list(query.order_by(AuditEvent.id))


def order_row(accession="ACC1") -> OrderRow:
    return OrderRow.get(OrderRow.accession_number == accession)


def units_used(auth="PA-1") -> int:
    return AuthRow.get(AuthRow.auth_number == auth).units_used


def send(app, folder, **changes):
    values = dict(AccessionNumber="ACC1", PatientID="MRN1", PatientName="DOE^JANE", PatientBirthDate="19800203",
                  PatientSex="", StudyDate="20261201", StudyInstanceUID=UID)
    values.update(changes)
    ds = make_instance(**values)
    return app.store.receive(write_instance(folder / f"{ds.SOPInstanceUID}.dcm", ds), "DX1")


@pytest.fixture
def ordered(app, clock):
    clock.now = dt.datetime(2026, 11, 30, 8, 0)
    import_orders(app, [ORDER], clock.now)
    import_auths(app, [AUTH], clock.now)
    return app


# ------------------------------------------------------------------ pure: which orders complete from images


def arrived(**changes) -> watch.Arrived:
    return replace(watch.Arrived("ACC1", "scheduled", UID, ARRIVED, False), **changes)


@pytest.mark.parametrize("changes, minutes_later, completes", [
    ({}, dt.timedelta(minutes=59, seconds=59), False),
    ({}, dt.timedelta(minutes=60), True),             # exactly at the boundary
    ({}, dt.timedelta(days=2), True),
    ({"has_mpps": True}, dt.timedelta(days=2), False),  # the modality reports steps: wait for it
    ({"order_status": "in-progress"}, dt.timedelta(days=2), False),
    ({"order_status": "cancelled"}, dt.timedelta(days=2), False),
    ({"order_status": "completed"}, dt.timedelta(days=2), False),
])
def test_which_orders_complete_from_their_images(changes, minutes_later, completes):
    due = watch.complete_without_mpps([arrived(**changes)], ARRIVED + minutes_later, 60)
    assert bool(due) is completes


# ------------------------------------------------------------------ the job


def test_an_order_without_mpps_completes_at_the_minute_and_uses_its_unit_once(ordered, clock, tmp_path):
    app = ordered
    clock.now = ARRIVED
    assert send(app, tmp_path).state == ARCHIVED
    assert app.gate.explain("ACC1").decision.served  # still on the worklist: a second exam could start

    clock.now = ARRIVED + dt.timedelta(minutes=59)
    result = jobs.run_job(app, "complete_without_mpps")
    assert result.counts == {"candidates": 1, "completed": 0, "units_used": 0}
    assert order_row().status == "scheduled"

    clock.now = ARRIVED + dt.timedelta(minutes=60)
    result = jobs.run_job(app, "complete_without_mpps")
    assert result.counts == {"candidates": 1, "completed": 1, "units_used": 1}
    row = order_row()
    assert (row.status, row.auth_unit_used, units_used()) == ("completed", "PA-1", 1)
    decision = app.gate.explain("ACC1").decision
    assert not decision.served and decision.codes[0] == "ORDER_NOT_SCHEDULED"  # off the worklist
    [event] = events("order.completed_from_images", "ACC1")
    assert event.user == "job:complete_without_mpps" and event.at == clock.now
    assert json.loads(event.detail)["auth_unit_used"] == "PA-1" and UID in event.reason
    [unit] = events("auth.unit_used", "PA-1")
    assert "without MPPS" in unit.reason

    # once: a second run changes nothing
    assert jobs.run_job(app, "complete_without_mpps").counts["completed"] == 0
    assert units_used() == 1

    # an MPPS that arrives after all links to the completed order and uses no second unit
    step = mpps.StepReport(generate_uid(), "IN PROGRESS", "ACC1")
    assert app.steps.create(step, "MR1").order_status == "completed"
    done = app.steps.set(dataclasses.replace(step, status="COMPLETED"), "MR1")
    assert (done.order_status, done.auth_unit_used) == ("completed", None)
    assert units_used() == 1 and order_row().auth_unit_used == "PA-1"


def test_an_mpps_in_progress_is_waited_for(ordered, clock, tmp_path):
    app = ordered
    clock.now = ARRIVED - dt.timedelta(minutes=5)
    step = mpps.StepReport(generate_uid(), "IN PROGRESS", "ACC1")
    app.steps.create(step, "MR1")
    clock.now = ARRIVED
    send(app, tmp_path)
    clock.now = ARRIVED + dt.timedelta(hours=5)
    assert jobs.run_job(app, "complete_without_mpps").counts["completed"] == 0
    assert order_row().status == "in-progress" and units_used() == 0

    # discontinued: the order is scheduled again, but its modality reports steps, so it still waits
    app.steps.set(dataclasses.replace(step, status="DISCONTINUED"), "MR1")
    assert order_row().status == "scheduled"
    assert jobs.run_job(app, "complete_without_mpps").counts["completed"] == 0
    assert order_row().status == "scheduled"


def test_no_study_a_held_study_or_a_cancelled_order_is_not_completed(ordered, clock, tmp_path):
    app = ordered
    clock.now = ARRIVED + dt.timedelta(days=1)
    assert jobs.run_job(app, "complete_without_mpps").counts == {"candidates": 0, "completed": 0, "units_used": 0}

    # a held study (another patient ID) waits for the technologist, then counts once released
    clock.now = ARRIVED
    assert send(app, tmp_path, PatientID="MRN9").state == HELD
    clock.now = ARRIVED + dt.timedelta(hours=3)
    assert jobs.run_job(app, "complete_without_mpps").counts["completed"] == 0
    app.store.release(UID, user="tech", reason="same patient, old MRN on the console")
    assert jobs.run_job(app, "complete_without_mpps").counts["completed"] == 1

    # a cancelled order with an archived study stays cancelled
    other = replace(ORDER, accession_number="ACC2", study_instance_uid="1.2.826.0.1.3680043.8.498.5002", cpt="71046")
    import_orders(app, [other], clock.now)
    clock.now = ARRIVED + dt.timedelta(hours=4)
    send(app, tmp_path, AccessionNumber="ACC2", StudyInstanceUID=other.study_instance_uid)
    OrderRow.update(status="cancelled").where(OrderRow.accession_number == "ACC2").execute()
    clock.now = ARRIVED + dt.timedelta(hours=6)
    assert jobs.run_job(app, "complete_without_mpps").counts["completed"] == 0
    assert order_row("ACC2").status == "cancelled"


def test_an_order_that_needs_no_auth_completes_without_using_a_unit(app, clock, tmp_path):
    clock.now = dt.datetime(2026, 11, 30, 8, 0)
    import_orders(app, [replace(ORDER, cpt="71046", modality="DX")], clock.now)
    clock.now = ARRIVED
    send(app, tmp_path, Modality="DX")
    clock.now = ARRIVED + dt.timedelta(hours=1)
    assert jobs.run_job(app, "complete_without_mpps").counts == {"candidates": 1, "completed": 1, "units_used": 0}
    assert (order_row().status, order_row().auth_unit_used) == ("completed", None)


# ------------------------------------------------------------------ pure: reports and filing deadlines


TERMS = {"ACME": PayerTerms(report_due_days=2, timely_filing_days=30)}.get
DEFAULT = PayerTerms()


def terms(payer: str) -> PayerTerms:
    return TERMS(payer) or DEFAULT


def study(status="", payer="ACME", at=ARRIVED) -> watch.ArchivedStudy:
    return watch.ArchivedStudy(UID, "ACC1", payer, status, at)


@pytest.mark.parametrize("status, later, overdue", [
    ("", dt.timedelta(days=2), False),                       # exactly report_due_days: not yet
    ("", dt.timedelta(days=2, seconds=1), True),
    ("preliminary", dt.timedelta(days=3), True),
    ("final", dt.timedelta(days=30), False),
    ("corrected", dt.timedelta(days=30), False),
])
def test_overdue_reports(status, later, overdue):
    flags = watch.overdue_reports([study(status)], terms, ARRIVED + later)
    assert bool(flags) is overdue
    if overdue:
        assert flags[0].action == watch.AUDIT_REPORT_OVERDUE and flags[0].subject == UID
        assert "ACC1" in flags[0].text and "2 days" in flags[0].text


def test_a_payer_without_terms_uses_the_default_deadline():
    assert not watch.overdue_reports([study(payer="BLUE")], terms, ARRIVED + dt.timedelta(days=3))
    assert watch.overdue_reports([study(payer="BLUE")], terms, ARRIVED + dt.timedelta(days=3, seconds=1))


def exam(status="", payer="ACME", day=dt.date(2026, 12, 1)) -> watch.Performed:
    return watch.Performed("ACC1", payer, status, day)


@pytest.mark.parametrize("status, today, flagged, words", [
    ("", dt.date(2026, 12, 16), False, ""),            # deadline 12-31: 15 days away, window 14
    ("", dt.date(2026, 12, 17), True, "in 14 days"),   # exactly the window
    ("preliminary", dt.date(2026, 12, 30), True, "in 1 day"),
    ("", dt.date(2026, 12, 31), True, "is today"),
    ("", dt.date(2027, 1, 5), True, "passed on 2026-12-31"),
    ("final", dt.date(2026, 12, 30), False, ""),
    ("corrected", dt.date(2026, 12, 30), False, ""),
])
def test_filing_deadlines(status, today, flagged, words):
    flags = watch.filing_deadlines([exam(status)], terms, today, 14)
    assert bool(flags) is flagged
    if flagged:
        assert flags[0].due == dt.date(2026, 12, 31) and words in flags[0].text


# ------------------------------------------------------------------ per-payer settings


def test_payer_tables_carry_deadlines_with_defaults():
    policy = parse_policy({
        "default": {"requires_auth": ["70553"], "report_due_days": 5},
        "ACME": {"timely_filing_days": 180},                   # deadlines only: keeps the default list
        "SELF_PAY": {"requires_auth": []},
    })
    assert policy.terms_of("ACME") == PayerTerms(5, 180)
    assert policy.terms_of("SELF_PAY") == PayerTerms(5, 90)
    assert policy.terms_of("UNLISTED") == PayerTerms(5, 90)
    assert policy.requires_auth("ACME", "70553") and not policy.requires_auth("SELF_PAY", "70553")
    assert parse_policy({}).terms_of("X") == PayerTerms(3, 90)


@pytest.mark.parametrize("value", [0, -1, "30", True, 1.5])
def test_a_bad_deadline_names_the_key(value):
    with pytest.raises(InvalidInput, match=r"payers\.ACME\.timely_filing_days must be a whole number"):
        parse_policy({"ACME": {"timely_filing_days": value}})


# ------------------------------------------------------------------ the watch job


def test_the_watch_flags_each_once_logs_no_patient_data_and_counts_in_the_report(ordered, clock, tmp_path,
                                                                               caplog, settings_path, monkeypatch,
                                                                               capsys):
    app = ordered
    clock.now = ARRIVED
    send(app, tmp_path)
    OrderRow.update(status="completed").where(OrderRow.accession_number == "ACC1").execute()

    clock.now = ARRIVED + dt.timedelta(days=3)  # default terms: 3 days to a final report: not yet overdue
    assert jobs.run_job(app, "report_watch").counts == {"overdue": 0, "overdue_flagged": 0, "deadlines_near": 0,
                                                        "deadlines_flagged": 0}
    clock.now = ARRIVED + dt.timedelta(days=3, minutes=1)
    with caplog.at_level(logging.WARNING):
        result = jobs.run_job(app, "report_watch")
    assert result.counts["overdue_flagged"] == 1 and result.counts["deadlines_flagged"] == 0
    [event] = events(watch.AUDIT_REPORT_OVERDUE, UID)
    assert event.user == "job:report_watch" and "ACC1" in event.reason
    assert "DOE" not in caplog.text and "MRN1" not in caplog.text and UID in caplog.text

    # 90 days to file from 2026-12-01: deadline 2027-03-01; 14 days before it is flagged, once
    clock.now = dt.datetime(2027, 2, 15, 7, 0)
    result = jobs.run_job(app, "report_watch")
    assert (result.counts["overdue_flagged"], result.counts["deadlines_flagged"]) == (0, 1)
    [event] = events(watch.AUDIT_FILING_NEAR, "ACC1")
    assert "2027-03-01" in event.reason and "in 14 days" in event.reason
    assert jobs.run_job(app, "report_watch").counts["deadlines_flagged"] == 0

    # a final report clears both (nothing new is flagged), and the report counts what was flagged
    OrderRow.update(report_status="final", report_status_at=clock.now).execute()
    assert jobs.run_job(app, "report_watch").counts == {"overdue": 0, "overdue_flagged": 0, "deadlines_near": 0,
                                                        "deadlines_flagged": 0}
    monkeypatch.setenv("GATEKEEPER_NOW", "2027-02-15T08:00:00")
    assert main(["--config", str(settings_path), "report", "--since", "2026-11-01", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["reports"] == {"by_status": {"none": 0, "preliminary": 0, "final": 1, "corrected": 0},
                               "overdue": 1, "deadlines_near": 1}
    assert main(["--config", str(settings_path), "report", "--since", "2026-11-01"]) == 0
    out = capsys.readouterr().out
    assert "Reports of the orders: 1 final" in out and "reports overdue (flagged): 1" in out


def test_payer_deadlines_come_from_settings(tmp_path, clock):
    from gateway.app import open_app
    from gateway.settings import load
    from tests.conftest import write_settings

    path = write_settings(tmp_path, extra="[payers.ACME]\nreport_due_days = 1\n")
    app = open_app(load(path, environ={}), clock=clock)
    try:
        import_orders(app, [ORDER], clock.now)
        import_auths(app, [AUTH], clock.now)
        clock.now = ARRIVED
        assert send(app, tmp_path).state == ARCHIVED
        clock.now = ARRIVED + dt.timedelta(days=1)
        assert jobs.run_job(app, "report_watch").counts["overdue_flagged"] == 0
        clock.now = ARRIVED + dt.timedelta(days=1, minutes=1)
        assert jobs.run_job(app, "report_watch").counts["overdue_flagged"] == 1
        assert app.settings.policy.requires_auth("ACME", "70553")  # the default list still applies to ACME
    finally:
        app.close()
