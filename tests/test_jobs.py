"""Rule 6 of docs/rules.md: the scheduled jobs, each with a controlled clock, the guard, the scheduler and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from dataclasses import replace

import pytest

from tests.conftest import import_auths, import_orders
from apscheduler.triggers.interval import IntervalTrigger

from gateway import jobs
from gateway.cli.main import main
from store import aging
from store.archive import ARCHIVE_TREE, REJECTED_TREE, Archive
from store.models import FindingRow, InstanceRow, StudyRow
from store.states import ARCHIVED, HELD, PURGED, REJECTED
from worklist import watch
from worklist.gating import AUTH_DATE_OUT_OF_RANGE, AUTH_MISSING, ORDER_NOT_SCHEDULED, Decision, Reason
from infra.audit import AuditEvent
from worklist.models import OrderRow
from worklist.orders import Auth, Order

ORDER = Order(
    accession_number="ACC1", patient_id="MRN1", patient_name="DOE^JANE", birth_date=dt.date(1980, 2, 3),
    cpt="70553", modality="MR", scheduled_start=dt.datetime(2026, 12, 1, 9, 30), station_ae="MR1",
    ordering_npi="1234567893", facility_npi="1987654328", payer_id="ACME",
)
AUTH = Auth(
    auth_number="PA-1", payer_id="ACME", patient_id="MRN1", cpt_codes=("70553",),
    facility_npi="1987654328", ordering_npi="1234567893",
    valid_from=dt.date(2026, 11, 20), valid_to=dt.date(2026, 12, 20), units=1,
)


def events(action: str, subject: str | None = None) -> list[AuditEvent]:
    query = AuditEvent.select().where(AuditEvent.action == action)
    if subject is not None:
        query = query.where(AuditEvent.subject == subject)
    return list(query.order_by(AuditEvent.id))


def order_row(accession: str) -> OrderRow:
    return OrderRow.get(OrderRow.accession_number == accession)


# ------------------------------------------------------------------ pure: watch.compare, store.aging

def _decision(acc: str, served: bool, *codes: str) -> Decision:
    return Decision(acc, served, "auth" if served else None, "PA-1", tuple(Reason(c, c) for c in codes))


@pytest.mark.parametrize("before, decision, kind, columns", [
    (None, _decision("A", True), watch.FIRST_SEEN, ("served", "")),
    (None, _decision("A", False, AUTH_MISSING), watch.FIRST_SEEN, ("withheld", AUTH_MISSING)),
    (watch.GateState("served"), _decision("A", True), watch.UNCHANGED, None),
    (watch.GateState("served"), _decision("A", False, AUTH_DATE_OUT_OF_RANGE), watch.WITHHELD_NOW,
     ("withheld", AUTH_DATE_OUT_OF_RANGE)),
    (watch.GateState("withheld", (AUTH_MISSING,)), _decision("A", True), watch.SERVED_NOW, ("served", "")),
    (watch.GateState("withheld", (AUTH_MISSING,)), _decision("A", False, AUTH_DATE_OUT_OF_RANGE),
     watch.CODES_CHANGED, ("withheld", AUTH_DATE_OUT_OF_RANGE)),
    # an order that left the open statuses: a served one is audited as withheld, then forgotten
    (watch.GateState("served"), _decision("A", False, ORDER_NOT_SCHEDULED), watch.WITHHELD_NOW, (None, "")),
    (watch.GateState("withheld", (AUTH_MISSING,)), _decision("A", False, ORDER_NOT_SCHEDULED), watch.RETIRED, (None, "")),
    (None, _decision("A", False, ORDER_NOT_SCHEDULED), watch.UNCHANGED, None),
])
def test_compare_classifies_each_transition(before, decision, kind, columns):
    [change] = watch.compare({"A": before}, [decision])
    assert change.kind == kind
    assert change.columns == columns
    assert change.audited == (kind in (watch.SERVED_NOW, watch.WITHHELD_NOW))


def test_recorded_state_round_trips_through_the_columns():
    state = watch.GateState("withheld", (AUTH_MISSING, AUTH_DATE_OUT_OF_RANGE))
    assert watch.GateState.recorded(*state.columns()) == state
    assert watch.GateState.recorded(None, "") is None


NOW = dt.datetime(2026, 11, 30, 8, 0)


@pytest.mark.parametrize("held_hours, flagged_at, expected", [
    (47.9, None, False),
    (48.0, None, True),
    (100, None, True),
    (100, NOW - dt.timedelta(hours=1), False),  # flagged already: once only
])
def test_aged_holds_threshold(held_hours, flagged_at, expected):
    study = aging.Hold("1.2.3", "ACC1", NOW - dt.timedelta(hours=held_hours), flagged_at)
    found = aging.aged_holds([study], NOW, 48)
    assert bool(found) == expected
    if expected:
        assert found[0].hours_held == round(held_hours, 1)


@pytest.mark.parametrize("age, expected", [
    (dt.timedelta(days=29, hours=23), False),
    (dt.timedelta(days=30), True),
    (dt.timedelta(days=45), True),
])
def test_past_retention_never_early(age, expected):
    study = aging.RejectedStudy("1.2.3", "ACC1", NOW - age)
    assert bool(aging.past_retention([study], NOW, 30)) == expected


# ------------------------------------------------------------------ reevaluate

def test_auth_expiring_at_midnight_withholds_after_the_day_boundary(app, clock):
    # An overdue exam, started yesterday and still in progress; its auth ends today (D = 2026-11-30).
    clock.now = dt.datetime(2026, 11, 30, 7, 0)
    order = replace(ORDER, status="in-progress", scheduled_start=dt.datetime(2026, 11, 29, 16, 0))
    import_orders(app, [order], clock.now)
    import_auths(app, [replace(AUTH, valid_to=dt.date(2026, 11, 30))], clock.now)

    clock.now = dt.datetime(2026, 11, 30, 23, 55)
    result = jobs.reevaluate(app)
    assert result.counts["evaluated"] == 1 and result.counts[watch.FIRST_SEEN] == 1
    assert (order_row("ACC1").last_decision, order_row("ACC1").last_reasons) == ("served", "")
    assert events(watch.AUDIT_WITHHELD) == [] and events(watch.AUDIT_SERVED) == []  # first seen: not a change

    # The scheduled day-boundary run fires at 00:00:05 local.
    trigger = jobs.JOBS["reevaluate"].triggers(app.settings)[0]
    tz = trigger.timezone
    fire = trigger.get_next_fire_time(None, dt.datetime(2026, 11, 30, 23, 55, tzinfo=tz))
    assert fire.replace(tzinfo=None) == dt.datetime(2026, 12, 1, 0, 0, 5)

    clock.now = dt.datetime(2026, 12, 1, 0, 0, 5)
    result = jobs.reevaluate(app)
    assert result.counts[watch.WITHHELD_NOW] == 1
    row = order_row("ACC1")
    assert (row.last_decision, row.last_reasons) == ("withheld", AUTH_DATE_OUT_OF_RANGE)
    [event] = events(watch.AUDIT_WITHHELD, "ACC1")
    assert event.at == clock.now and event.user == "job:reevaluate"
    assert "Auth PA-1 is valid 2026-11-20 to 2026-11-30, the exam is on 2026-12-01" in event.reason
    detail = json.loads(event.detail)
    assert detail["before"] == "served" and detail["codes"] == [AUTH_DATE_OUT_OF_RANGE]
    assert detail["auth_number"] == "PA-1"

    # Nothing changed: no second audit.
    clock.now = dt.datetime(2026, 12, 1, 0, 5)
    assert jobs.reevaluate(app).counts[watch.WITHHELD_NOW] == 0
    assert len(events(watch.AUDIT_WITHHELD, "ACC1")) == 1

    # The payer extends the auth: served again, audited as such.
    import_auths(app, [replace(AUTH, valid_to=dt.date(2026, 12, 31))], clock.now)
    clock.now = dt.datetime(2026, 12, 1, 0, 10)
    assert jobs.reevaluate(app).counts[watch.SERVED_NOW] == 1
    [event] = events(watch.AUDIT_SERVED, "ACC1")
    assert event.reason == "served, with auth PA-1"
    assert json.loads(event.detail)["before_codes"] == [AUTH_DATE_OUT_OF_RANGE]
    assert order_row("ACC1").last_decision == "served"


def test_reevaluate_selects_open_orders_from_yesterday_and_tracked_ones(app, clock):
    clock.now = dt.datetime(2026, 12, 1, 8, 0)
    import_orders(app, [
        replace(ORDER, accession_number="OLD", scheduled_start=dt.datetime(2026, 11, 28, 9, 0)),  # before yesterday
        replace(ORDER, accession_number="YDAY", scheduled_start=dt.datetime(2026, 11, 30, 9, 0)),
        replace(ORDER, accession_number="DONE", status="completed"),
        replace(ORDER, accession_number="TODAY", cpt="71046"),
    ], clock.now)
    assert jobs.reevaluate(app).counts["evaluated"] == 2
    assert order_row("OLD").last_decision is None and order_row("DONE").last_decision is None
    assert order_row("YDAY").last_decision == "withheld" and order_row("TODAY").last_decision == "served"

    # Days later both are overdue: still tracked, because their state is recorded.
    clock.now = dt.datetime(2026, 12, 5, 8, 0)
    assert jobs.reevaluate(app).counts["evaluated"] == 2

    # TODAY completes: its leaving the worklist is audited once, then it is no longer loaded.
    OrderRow.update(status="completed").where(OrderRow.accession_number == "TODAY").execute()
    result = jobs.reevaluate(app)
    assert result.counts[watch.WITHHELD_NOW] == 1 and result.counts[watch.RETIRED] == 0
    [event] = events(watch.AUDIT_WITHHELD, "TODAY")
    assert json.loads(event.detail)["codes"] == [ORDER_NOT_SCHEDULED]
    assert order_row("TODAY").last_decision is None
    assert jobs.reevaluate(app).counts["evaluated"] == 1


def test_reevaluate_in_chunks_covers_every_order(app, clock):
    clock.now = dt.datetime(2026, 11, 30, 8, 0)
    orders = [
        replace(ORDER, accession_number=f"A{i:05d}", patient_id=f"P{i:05d}",
                cpt="70553" if i % 2 else "71046")  # odd: needs an auth (none on file), even: none needed
        for i in range(1050)
    ]
    import_orders(app, orders, clock.now)
    import_auths(app, [replace(AUTH, auth_number=f"PA-{i}", patient_id=f"P{i:05d}", valid_to=dt.date(2026, 11, 30))
                  for i in range(1, 1050, 4)], clock.now)  # a quarter of the auth orders, valid until today
    result = jobs.reevaluate(app, chunk_size=100)
    assert result.counts["evaluated"] == 1050 and result.counts[watch.FIRST_SEEN] == 1050
    served = OrderRow.select().where(OrderRow.last_decision == "served").count()
    # Order dates are 2026-12-01: the auths ending 11-30 do not cover them, so only no-auth orders serve.
    assert served == 525
    assert OrderRow.select().where(OrderRow.last_reasons == AUTH_DATE_OUT_OF_RANGE).count() == 263
    assert OrderRow.select().where(OrderRow.last_reasons == AUTH_MISSING).count() == 262


# ------------------------------------------------------------------ expiring_auths

def test_expiring_auths_warns_once_per_order_auth_and_reason(app, clock, caplog):
    clock.now = dt.datetime(2026, 11, 30, 6, 0)
    import_orders(app, [
        replace(ORDER, accession_number="EXP", scheduled_start=dt.datetime(2026, 12, 5, 9, 0)),
        replace(ORDER, accession_number="OK", patient_id="MRN2", scheduled_start=dt.datetime(2026, 12, 2, 9, 0)),
        replace(ORDER, accession_number="U1", patient_id="MRN3", scheduled_start=dt.datetime(2026, 12, 2, 9, 0)),
        replace(ORDER, accession_number="U2", patient_id="MRN3", scheduled_start=dt.datetime(2026, 12, 4, 9, 0)),
        replace(ORDER, accession_number="FAR", patient_id="MRN4", scheduled_start=dt.datetime(2026, 12, 20, 9, 0)),
    ], clock.now)
    import_auths(app, [
        replace(AUTH, auth_number="PA-EXP", valid_to=dt.date(2026, 12, 3)),  # ends before the exam on 12-05
        replace(AUTH, auth_number="PA-OK", patient_id="MRN2"),
        replace(AUTH, auth_number="PA-U", patient_id="MRN3", units=1),  # one unit, two orders count on it
        replace(AUTH, auth_number="PA-FAR", patient_id="MRN4", valid_to=dt.date(2026, 12, 10)),  # after the window
    ], clock.now)

    with caplog.at_level(logging.WARNING, logger="gateway.jobs"):
        result = jobs.expiring_auths(app)
    assert result.counts == {"due": 4, "at_risk": 2, "warned": 2}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("EXP" in w and "auth PA-EXP expires on 2026-12-03, before the exam on 2026-12-05" in w for w in warnings)
    assert any("U2" in w and "auth PA-U has 1 unit left and 2 open orders count on it" in w for w in warnings)
    assert not any("MRN" in w or "DOE" in w for w in warnings)  # no patient identifiers in the log
    [expiring] = events(watch.RISK_ACTIONS[watch.AUTH_WILL_EXPIRE])
    assert expiring.subject == "EXP" and json.loads(expiring.detail)["auth_number"] == "PA-EXP"
    [short] = events(watch.RISK_ACTIONS[watch.AUTH_UNITS_SHORT])
    assert short.subject == "U2" and json.loads(short.detail)["auth_number"] == "PA-U"

    # The next day: still at risk, but already warned of.
    clock.now = dt.datetime(2026, 12, 1, 6, 0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gateway.jobs"):
        result = jobs.expiring_auths(app)
    assert result.counts["at_risk"] == 2 and result.counts["warned"] == 0
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(events(watch.RISK_ACTIONS[watch.AUTH_WILL_EXPIRE])) == 1

    # A new auth number for the same order is a new warning.
    import_auths(app, [replace(AUTH, auth_number="PA-EXP2", valid_from=dt.date(2026, 11, 25),
                          valid_to=dt.date(2026, 12, 4))], clock.now)
    assert jobs.expiring_auths(app).counts["warned"] == 1


# ------------------------------------------------------------------ held_age

def add_study(uid: str, state: str, at: dt.datetime, *, held_at=None, accession="ACC1", instances=0) -> StudyRow:
    return StudyRow.create(study_instance_uid=uid, state=state, accession_number=accession, order_accession=accession,
                           first_received_at=at, last_received_at=at, held_at=held_at, state_changed_at=at,
                           instance_count=instances)


def test_held_study_crosses_the_age_threshold(app, clock, caplog):
    held_at = dt.datetime(2026, 11, 28, 9, 0)
    add_study("1.2.826.0.1.3680043.8.498.100", HELD, held_at, held_at=held_at, accession="ACC7")
    add_study("1.2.826.0.1.3680043.8.498.101", ARCHIVED, held_at, held_at=held_at)  # released: not flagged
    FindingRow.create(study_instance_uid="1.2.826.0.1.3680043.8.498.100", sop_instance_uid="1.2.3.4",
                      code="PATIENT_ID_MISMATCH", found_at=held_at)

    clock.now = held_at + dt.timedelta(hours=47, minutes=59)
    assert jobs.held_age(app).counts == {"checked": 1, "flagged": 0}
    assert StudyRow.get(StudyRow.study_instance_uid == "1.2.826.0.1.3680043.8.498.100").age_flagged_at is None

    clock.now = held_at + dt.timedelta(hours=50)
    with caplog.at_level(logging.WARNING, logger="gateway.jobs"):
        assert jobs.held_age(app).counts == {"checked": 1, "flagged": 1}
    row = StudyRow.get(StudyRow.study_instance_uid == "1.2.826.0.1.3680043.8.498.100")
    assert row.age_flagged_at == clock.now and row.state == HELD
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "1.2.826.0.1.3680043.8.498.100" in warning and "ACC7" in warning and "50.0 hours" in warning
    [event] = events(aging.AUDIT_HELD_TOO_LONG)
    assert event.subject == "1.2.826.0.1.3680043.8.498.100" and json.loads(event.detail)["hours_held"] == 50.0

    clock.now += dt.timedelta(hours=5)
    assert jobs.held_age(app).counts == {"checked": 0, "flagged": 0}
    assert len(events(aging.AUDIT_HELD_TOO_LONG)) == 1


# ------------------------------------------------------------------ purge_rejected

OLD_UID, NEW_UID, KEPT_UID = "1.2.826.0.1.3680043.8.498.200", "1.2.826.0.1.3680043.8.498.300", "1.2.826.0.1.3680043.8.498.400"


def add_files(archive: Archive, tree: str, study: str, count: int) -> None:
    for i in range(count):
        series, sop = f"{study}.1", f"{study}.1.{i + 1}"
        stored = archive.write_new(tree, study, series, sop, b"DICM" * 100)
        InstanceRow.create(sop_instance_uid=sop, study_instance_uid=study, series_instance_uid=series,
                           sop_class_uid="1.2.840.10008.5.1.4.1.1.4", path=str(stored.path), size=stored.size,
                           sha256=stored.sha256, received_at=NOW)


def test_rejected_study_past_retention_is_purged_and_one_inside_is_kept(app, clock):
    archive = app.store.archive
    clock.now = dt.datetime(2026, 12, 31, 2, 0)
    add_study(OLD_UID, REJECTED, clock.now - dt.timedelta(days=31), held_at=dt.datetime(2026, 11, 29), instances=3)
    add_files(archive, REJECTED_TREE, OLD_UID, 3)
    add_study(NEW_UID, REJECTED, clock.now - dt.timedelta(days=29), held_at=dt.datetime(2026, 11, 29), instances=2)
    add_files(archive, REJECTED_TREE, NEW_UID, 2)
    add_study(KEPT_UID, ARCHIVED, clock.now - dt.timedelta(days=90), instances=1)  # archived: never purged
    add_files(archive, ARCHIVE_TREE, KEPT_UID, 1)

    result = jobs.purge_rejected(app)
    assert result.counts == {"rejected": 2, "due": 1, "purged": 1, "files_deleted": 3, "failed": 0}
    assert archive.study_files(REJECTED_TREE, OLD_UID) == ()
    old = StudyRow.get(StudyRow.study_instance_uid == OLD_UID)
    assert old.state == PURGED and old.state_changed_at == clock.now and old.instance_count == 3
    assert InstanceRow.select().where(InstanceRow.study_instance_uid == OLD_UID).count() == 0
    [event] = events(aging.AUDIT_PURGED, OLD_UID)
    detail = json.loads(event.detail)
    assert (detail["files_deleted"], detail["instance_rows_deleted"], detail["bytes_freed"]) == (3, 3, 1200)
    assert "past the 30-day retention" in event.reason

    assert len(archive.study_files(REJECTED_TREE, NEW_UID)) == 2
    assert StudyRow.get(StudyRow.study_instance_uid == NEW_UID).state == REJECTED
    assert len(archive.study_files(ARCHIVE_TREE, KEPT_UID)) == 1
    assert StudyRow.get(StudyRow.study_instance_uid == KEPT_UID).state == ARCHIVED

    # A second run finds nothing more; two days later the other study's retention is over.
    assert jobs.purge_rejected(app).counts["purged"] == 0
    clock.now += dt.timedelta(days=2)
    assert jobs.purge_rejected(app).counts["purged"] == 1
    assert archive.study_files(REJECTED_TREE, NEW_UID) == ()
    assert len(events(aging.AUDIT_PURGED)) == 2


def test_purge_never_touches_a_study_that_left_the_rejected_state(app, clock, monkeypatch):
    archive = app.store.archive
    clock.now = dt.datetime(2026, 12, 31, 2, 0)
    add_study(OLD_UID, REJECTED, clock.now - dt.timedelta(days=40), instances=1)
    add_files(archive, REJECTED_TREE, OLD_UID, 1)
    # The study changes state between the listing and the purge (another gateway, an operator).
    real = aging.past_retention

    def and_then_archive(*args):
        found = real(*args)
        StudyRow.update(state=ARCHIVED).where(StudyRow.study_instance_uid == OLD_UID).execute()
        return found

    monkeypatch.setattr(aging, "past_retention", and_then_archive)
    assert jobs.purge_rejected(app).counts["purged"] == 0
    assert len(archive.study_files(REJECTED_TREE, OLD_UID)) == 1
    assert events(aging.AUDIT_PURGED) == []


# ------------------------------------------------------------------ the guard and the scheduler

def test_a_failing_job_is_logged_and_runs_again(app, caplog):
    calls = []

    def flaky(app):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database went away")
        return jobs.JobResult("flaky", "fine")

    job = jobs.Job("flaky", "fails once", flaky, lambda s: [], lambda s: "every now and then")
    with caplog.at_level(logging.INFO, logger="gateway.jobs"):
        assert jobs.guarded(app, job) is None
        assert jobs.guarded(app, job).summary == "fine"
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "job flaky failed" in error.getMessage() and "database went away" in error.getMessage()
    assert error.exc_info is not None and error.exc_info[0] is RuntimeError  # the traceback is logged
    assert len(calls) == 2


def test_the_scheduler_keeps_running_a_job_that_raised(app, caplog):
    calls, again = [], threading.Event()

    def flaky(app):
        calls.append(app.now())
        if len(calls) == 1:
            raise RuntimeError("first run fails")
        if len(calls) >= 3:
            again.set()
        return jobs.JobResult("flaky", "fine")

    job = jobs.Job("flaky", "fails once", flaky, lambda s: [IntervalTrigger(seconds=0.05)], lambda s: "often")
    with caplog.at_level(logging.ERROR, logger="gateway.jobs"):
        scheduler = jobs.start(app, [job])
        try:
            assert again.wait(10), "the job did not run again after it failed"
            assert scheduler.running
        finally:
            scheduler.shutdown(wait=True)
    assert calls[0] == app.now()  # the body reads the app's clock
    assert any(r.exc_info and "job flaky failed" in r.getMessage() for r in caplog.records)


def test_start_jobs_follows_the_settings(app):
    scheduler = jobs.start(app)
    try:
        assert {j.id for j in scheduler.get_jobs()} == set(jobs.JOBS)
    finally:
        scheduler.shutdown(wait=False)
    disabled = replace(app, settings=replace(app.settings, jobs_enabled=False))
    assert jobs.start(disabled) is None
    no_interval = replace(app, settings=replace(app.settings, held_age_minutes=0))
    scheduler = jobs.start(no_interval)
    try:
        assert {j.id for j in scheduler.get_jobs()} == set(jobs.JOBS) - {"held_age"}
    finally:
        scheduler.shutdown(wait=False)


# ------------------------------------------------------------------ the command line

@pytest.fixture
def cli_env(monkeypatch):
    monkeypatch.delenv("GATEKEEPER_DATABASE_URL", raising=False)
    monkeypatch.setenv("GATEKEEPER_NOW", "2026-11-30T08:00:00")


def test_jobs_run_by_name_from_the_command_line(app, settings_path, cli_env, capsys):
    import_orders(app, [ORDER], dt.datetime(2026, 11, 30, 7, 0))
    import_auths(app, [AUTH], dt.datetime(2026, 11, 30, 7, 0))
    assert main(["--config", str(settings_path), "jobs", "run", "reevaluate"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == "reevaluate: 1 orders evaluated as of 2026-11-30: 0 now withheld, 0 now served, 1 first seen"
    assert order_row("ACC1").last_decision == "served"

    assert main(["--config", str(settings_path), "jobs", "run", "held_age"]) == 0
    assert capsys.readouterr().out.startswith("held_age: 0 held studies")


def test_jobs_run_unknown_name_lists_the_jobs(app, settings_path, cli_env, capsys):
    assert main(["--config", str(settings_path), "jobs", "run", "purge"]) == 2
    err = capsys.readouterr().err
    assert "there is no job 'purge'" in err
    for name in jobs.JOBS:
        assert name in err


def test_jobs_run_failure_exits_1_and_logs_the_traceback(app, settings_path, cli_env, capsys, monkeypatch, caplog):
    def broken(app):
        raise OSError("store not mounted")

    monkeypatch.setitem(jobs.JOBS, "held_age", replace(jobs.JOBS["held_age"], run=broken))
    with caplog.at_level(logging.ERROR, logger="gateway.jobs"):
        assert main(["--config", str(settings_path), "jobs", "run", "held_age"]) == 1
    assert "job held_age failed: store not mounted" in capsys.readouterr().err
    assert any(r.exc_info for r in caplog.records)


def test_jobs_list_shows_names_schedules_and_descriptions(app, settings_path, cli_env, capsys):
    assert main(["--config", str(settings_path), "jobs", "list"]) == 0
    out = capsys.readouterr().out
    assert "reevaluate             daily at 00:00:05 and every 5 min" in out
    assert "expiring_auths         daily at 06:00 (next 7 days)" in out
    assert "held_age               every 60 min (alert after 48 h)" in out
    assert "purge_rejected         daily at 02:00 (retention 30 days)" in out
    assert "complete_without_mpps  every 5 min (after 60 min without MPPS)" in out
    assert "report_watch           daily at 07:00 (deadlines within 14 days)" in out
    assert "flag held studies older than storage.held_alert_hours" in out
