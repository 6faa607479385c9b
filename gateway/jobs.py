"""SPEC rule 6: the scheduled jobs, their apscheduler wiring, and the IO each one does.

Four jobs, each a function ``run(app) -> JobResult`` that takes the time from
``app.now()`` (never the wall clock), loads rows, asks a pure module what to do
(:mod:`worklist.watch`, :mod:`store.aging`) and records the outcome:

- ``reevaluate``: rule 1 again over the open orders; a flip between served and withheld
  is audited with its reasons;
- ``expiring_auths``: warn once of orders due soon whose auth will not cover them;
- ``held_age``: flag held studies older than ``storage.held_alert_hours``;
- ``purge_rejected``: delete the files of rejected studies past retention.

:func:`start` schedules them on a :class:`BackgroundScheduler` inside ``gatekeeper serve``
(apscheduler's triggers follow the wall clock; the job bodies use the app's clock).
Every scheduled run goes through :func:`guarded`: a failure is logged with its traceback
and the job runs again at its next time; it never stops the server.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable

import peewee as pw
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from gateway.app import App
from gateway.settings import Settings
from store import aging
from store.archive import REJECTED as REJECTED_TREE, Archive
from store.models import HELD, PURGED, REJECTED, InstanceRow, StudyRow
from worklist import service, watch
from worklist.db import database
from worklist.models import AuditEvent, OrderRow, audit
from worklist.orders import WORKABLE_STATUSES

log = logging.getLogger("gateway.jobs")

#: Orders re-evaluated per batch (one transaction each).
REEVALUATE_CHUNK = 2000
_IN_BATCH = 500


@dataclass(frozen=True)
class JobResult:
    """What one run of a job did: a line for people and the counts behind it."""

    job: str
    summary: str
    counts: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.job}: {self.summary}"


@dataclass(frozen=True)
class Job:
    """A named job: what it does, when it runs (from settings), and its body."""

    name: str
    description: str
    run: Callable[[App], JobResult]
    triggers: Callable[[Settings], list[BaseTrigger]]
    schedule: Callable[[Settings], str]


class UnknownJob(LookupError):
    """No job has that name; the message lists the names."""


def _user(job: str) -> str:
    """The audit log's ``user`` of a job's events."""
    return f"job:{job}"


def _batches(items: list, size: int = _IN_BATCH):
    for start in range(0, len(items), size):
        yield items[start:start + size]


# ------------------------------------------------------------------------ reevaluate

def reevaluate(app: App, chunk_size: int = REEVALUATE_CHUNK) -> JobResult:
    """Rule 1 over the open orders scheduled from yesterday on and every order with a recorded state.

    Orders are read by id in chunks; each chunk is decided with one batched load of auths
    and overrides, and its outcome written in one transaction. A flip is written with a
    compare-and-set on ``last_decision`` so that two gateways sharing a database audit it once.
    """
    now = app.now()
    today = now.date()
    since = dt.datetime.combine(today - dt.timedelta(days=1), dt.time.min)
    selected = (
        (OrderRow.status.in_(WORKABLE_STATUSES) & (OrderRow.scheduled_start >= since))
        | OrderRow.last_decision.is_null(False)
    )
    counts: Counter[str] = Counter()
    last_id = 0
    while True:
        rows = list(
            OrderRow.select().where(selected & (OrderRow.id > last_id)).order_by(OrderRow.id).limit(chunk_size)
        )
        if not rows:
            break
        last_id = rows[-1].id
        before = {r.accession_number: watch.GateState.recorded(r.last_decision, r.last_reasons) for r in rows}
        decisions = service.decide_all([r.to_order() for r in rows], app.settings.policy, today)
        changes = watch.compare(before, decisions)
        ids = {r.accession_number: r.id for r in rows}
        with database.atomic():
            _record_changes(changes, ids, now, counts)
        counts["evaluated"] += len(rows)
    summary = (f"{counts['evaluated']} orders evaluated as of {today}: {counts[watch.WITHHELD_NOW]} now withheld, "
               f"{counts[watch.SERVED_NOW]} now served, {counts[watch.FIRST_SEEN]} first seen")
    return JobResult("reevaluate", summary, _counts(counts, "evaluated", watch.WITHHELD_NOW, watch.SERVED_NOW,
                                                    watch.FIRST_SEEN, watch.CODES_CHANGED, watch.RETIRED))


def _record_changes(changes: list[watch.Change], ids: dict[str, int], now: dt.datetime, counts: Counter) -> None:
    quiet: dict[tuple, list[int]] = defaultdict(list)
    for change in changes:
        columns = change.columns
        if columns is None:
            continue
        if not change.audited:
            quiet[columns].append(ids[change.accession_number])
            counts[change.kind] += 1
            continue
        last_decision, last_reasons = columns
        won = (
            OrderRow.update(last_decision=last_decision, last_reasons=last_reasons)
            .where((OrderRow.id == ids[change.accession_number])
                   & (OrderRow.last_decision == change.before.outcome))
            .execute()
        )
        if won != 1:
            continue  # another gateway recorded this flip first
        counts[change.kind] += 1
        d = change.decision
        action = watch.AUDIT_SERVED if change.kind == watch.SERVED_NOW else watch.AUDIT_WITHHELD
        audit(now, _user("reevaluate"), action, change.accession_number, watch.change_reason(change),
              before=change.before.outcome, before_codes=list(change.before.codes),
              after=change.after.outcome, codes=list(d.codes), basis=d.basis, auth_number=d.auth_number)
        why = (f"{d.basis}, auth {d.auth_number}" if d.auth_number else d.basis) if d.served else " ".join(d.codes)
        log.info("order %s is now %s (%s)", change.accession_number, change.after.outcome, why)
    for (last_decision, last_reasons), row_ids in quiet.items():
        for batch in _batches(row_ids):
            OrderRow.update(last_decision=last_decision, last_reasons=last_reasons).where(
                OrderRow.id.in_(batch)).execute()


# ------------------------------------------------------------------------ expiring_auths

def expiring_auths(app: App) -> JobResult:
    """Warn once (WARNING log and audit) of each order due soon whose auth will not cover it."""
    now = app.now()
    today = now.date()
    start, end = watch.due_window(today, app.settings.expiring_auth_days)
    open_status = OrderRow.status.in_(WORKABLE_STATUSES)
    due = service.orders_where(open_status, OrderRow.scheduled_start >= start, OrderRow.scheduled_start < end)
    patients = sorted({o.patient_id for o in due})
    open_orders = [o for batch in _batches(patients) for o in service.orders_where(open_status, OrderRow.patient_id.in_(batch))]
    auths = service.auths_for_patients(patients)
    overrides = service.overrides_for(o.accession_number for o in open_orders)
    risks = watch.auth_risks(due, open_orders, auths, overrides, app.settings.policy, today)
    fresh = watch.new_risks(risks, _warned_before(sorted({r.accession_number for r in risks})))
    with database.atomic():
        for risk in fresh:
            log.warning("order %s on %s: %s", risk.accession_number, risk.scheduled_date, risk.text)
            audit(now, _user("expiring_auths"), watch.RISK_ACTIONS[risk.code], risk.accession_number, risk.text,
                  auth_number=risk.auth_number, code=risk.code, scheduled_date=risk.scheduled_date.isoformat())
    summary = (f"{len(due)} open orders due {start:%Y-%m-%d} to {end - dt.timedelta(days=1):%Y-%m-%d}: "
               f"{len(risks)} at risk, {len(fresh)} newly warned of")
    return JobResult("expiring_auths", summary, {"due": len(due), "at_risk": len(risks), "warned": len(fresh)})


def _warned_before(accessions: list[str]) -> set[tuple[str, str, str]]:
    """(accession, auth number, code) of every expiring-auth warning already in the audit log."""
    warned = set()
    for batch in _batches(accessions):
        query = (AuditEvent.select(AuditEvent.subject, AuditEvent.detail)
                 .where(AuditEvent.action.in_(list(watch.RISK_ACTIONS.values())) & AuditEvent.subject.in_(batch)))
        for subject, detail in query.tuples():
            info = json.loads(detail or "{}")
            warned.add((subject, info.get("auth_number", ""), info.get("code", "")))
    return warned


# ------------------------------------------------------------------------ held_age

def held_age(app: App) -> JobResult:
    """Flag held studies older than ``storage.held_alert_hours``: WARNING, ``age_flagged_at``, one audit."""
    now = app.now()
    hours = app.settings.held_alert_hours
    rows = StudyRow.select().where((StudyRow.state == HELD) & StudyRow.age_flagged_at.is_null())
    held = [aging.HeldStudy(r.study_instance_uid, r.accession_number, r.held_at or r.state_changed_at) for r in rows]
    flagged = 0
    for aged in aging.aged_holds(held, now, hours):
        with database.atomic():
            won = (StudyRow.update(age_flagged_at=now)
                   .where((StudyRow.study_instance_uid == aged.study_instance_uid) & (StudyRow.state == HELD)
                          & StudyRow.age_flagged_at.is_null())
                   .execute())
            if won != 1:
                continue  # released, rejected or flagged meanwhile
            audit(now, _user("held_age"), aging.AUDIT_HELD_TOO_LONG, aged.study_instance_uid, aged.message(hours),
                  accession_number=aged.accession_number, held_at=aged.held_at.isoformat(),
                  hours_held=aged.hours_held, alert_hours=hours)
        flagged += 1
        log.warning("%s", aged.message(hours))
    summary = f"{len(held)} held studies not yet flagged, {flagged} now flagged as held over {hours} hours"
    return JobResult("held_age", summary, {"checked": len(held), "flagged": flagged})


# ------------------------------------------------------------------------ purge_rejected

def purge_rejected(app: App) -> JobResult:
    """Delete the files of rejected studies past ``storage.rejected_retention_days``.

    The study row stays (state ``purged``, with its findings and instance count) as the
    record that the study existed; its instance rows, which only said where files were,
    are deleted. Only files in the ``rejected/`` tree are ever removed, and only for a
    study whose row is in the rejected state when it is purged. Files go first, then the
    row changes state: a crash in between leaves a rejected study with fewer files, which
    the next run finishes.
    """
    now = app.now()
    days = app.settings.rejected_retention_days
    rows = StudyRow.select().where(StudyRow.state == REJECTED)
    rejected = [aging.RejectedStudy(r.study_instance_uid, r.accession_number, r.state_changed_at) for r in rows]
    due = aging.past_retention(rejected, now, days)
    archive = Archive(app.settings.storage_root) if due else None
    purged = files = failed = 0
    for study in due:
        try:
            removed = _purge_one(archive, study, now, days)
        except Exception:
            failed += 1
            log.exception("could not purge rejected study %s; it is tried again at the next run", study.study_instance_uid)
            continue
        if removed is not None:
            purged += 1
            files += removed
    summary = (f"{len(rejected)} rejected studies, {len(due)} past the {days}-day retention: "
               f"{purged} purged ({files} files deleted)" + (f", {failed} failed (see the errors above)" if failed else ""))
    counts = {"rejected": len(rejected), "due": len(due), "purged": purged, "files_deleted": files, "failed": failed}
    if failed:
        raise RuntimeError(summary)
    return JobResult("purge_rejected", summary, counts)


def _purge_one(archive: Archive, study: aging.RejectedStudy, now: dt.datetime, days: int) -> int | None:
    """Purge one study; the number of files deleted, or None when it is no longer rejected."""
    uid = study.study_instance_uid
    current = StudyRow.get_or_none(StudyRow.study_instance_uid == uid)
    if current is None or current.state != REJECTED:
        return None
    size, rows = (InstanceRow.select(pw.fn.COALESCE(pw.fn.SUM(InstanceRow.size), 0), pw.fn.COUNT(InstanceRow.id))
                  .where(InstanceRow.study_instance_uid == uid).scalar(as_tuple=True))
    removed = archive.remove_study(REJECTED_TREE, uid)
    with database.atomic():
        won = (StudyRow.update(state=PURGED, state_changed_at=now)
               .where((StudyRow.study_instance_uid == uid) & (StudyRow.state == REJECTED))
               .execute())
        if won != 1:
            return None
        deleted = InstanceRow.delete().where(InstanceRow.study_instance_uid == uid).execute()
        audit(now, _user("purge_rejected"), aging.AUDIT_PURGED, uid,
              f"rejected on {study.rejected_at:%Y-%m-%d %H:%M}, past the {days}-day retention",
              accession_number=study.accession_number, files_deleted=removed, instance_rows_deleted=deleted,
              bytes_freed=int(size), instance_count=current.instance_count, indexed_instances=rows)
    log.info("purged rejected study %s (accession %s): %d files deleted", uid, study.accession_number or "none", removed)
    return removed


# ------------------------------------------------------------------------ the registry

def _daily(hour: int, minute: int = 0, second: int = 0) -> CronTrigger:
    return CronTrigger(hour=hour, minute=minute, second=second)


def _every(minutes: int) -> list[BaseTrigger]:
    return [IntervalTrigger(minutes=minutes)] if minutes > 0 else []


JOBS: dict[str, Job] = {
    job.name: job for job in (
        Job("reevaluate",
            "re-evaluate the worklist; audit each order that flips between served and withheld",
            reevaluate,
            lambda s: [_daily(0, 0, 5), *_every(s.reevaluate_minutes)],
            lambda s: "daily at 00:00:05" + (f" and every {s.reevaluate_minutes} min" if s.reevaluate_minutes else "")),
        Job("expiring_auths",
            "warn of orders due soon whose auth will have expired or run out of units",
            expiring_auths,
            lambda s: [_daily(s.expiring_auth_hour)],
            lambda s: f"daily at {s.expiring_auth_hour:02d}:00 (next {s.expiring_auth_days} days)"),
        Job("held_age",
            "flag held studies older than storage.held_alert_hours",
            held_age,
            lambda s: _every(s.held_age_minutes),
            lambda s: (f"every {s.held_age_minutes} min" if s.held_age_minutes else "by hand only")
            + f" (alert after {s.held_alert_hours} h)"),
        Job("purge_rejected",
            "delete the files of rejected studies past storage.rejected_retention_days",
            purge_rejected,
            lambda s: [_daily(s.purge_hour)],
            lambda s: f"daily at {s.purge_hour:02d}:00 (retention {s.rejected_retention_days} days)"),
    )
}


def get(name: str) -> Job:
    """The job called ``name``; :class:`UnknownJob` names the jobs there are."""
    try:
        return JOBS[name]
    except KeyError:
        raise UnknownJob(
            f"there is no job {name!r}; the jobs are {', '.join(JOBS)} ('gatekeeper jobs list' shows them)"
        ) from None


def run_job(app: App, name: str) -> JobResult:
    """Run one job now, in this thread (``gatekeeper jobs run NAME``). Exceptions propagate."""
    return get(name).run(app)


def guarded(app: App, job: Job) -> JobResult | None:
    """Run ``job`` and never raise: a failure is logged at ERROR with its traceback.

    Returns the result, or None when the job failed; the scheduler runs it again at its
    next time.
    """
    started = time.monotonic()
    try:
        result = job.run(app)
    except Exception as exc:
        log.exception("job %s failed after %.1fs: %s; it runs again at its next time (%s)",
                      job.name, time.monotonic() - started, exc, job.schedule(app.settings))
        return None
    log.info("job %s: %s (%.1fs)", job.name, result.summary, time.monotonic() - started)
    return result


def _scheduled(app: App, job: Job) -> None:
    """The scheduler's entry point: a database connection of its own for this run, then :func:`guarded`."""
    try:
        with app.db.connection_context():
            guarded(app, job)
    except Exception:  # the connection itself failed
        log.exception("job %s could not reach the database; it runs again at its next time", job.name)


def start(app: App, jobs: Iterable[Job] | None = None) -> BackgroundScheduler:
    """Schedule ``jobs`` (default: all) on a started :class:`BackgroundScheduler`.

    A run that finds the previous one still going is skipped, and missed runs are
    coalesced into one. A job whose interval is 0 minutes is not scheduled (it still
    runs by hand).
    """
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # no line per run at INFO
    scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 600})
    planned = []
    for job in JOBS.values() if jobs is None else jobs:
        triggers = job.triggers(app.settings)
        if not triggers:
            log.info("job %s is not scheduled (interval 0); run it with 'gatekeeper jobs run %s'", job.name, job.name)
            continue
        trigger = triggers[0] if len(triggers) == 1 else OrTrigger(triggers)
        scheduler.add_job(_scheduled, trigger, args=(app, job), id=job.name, name=job.name)
        planned.append(f"{job.name} {job.schedule(app.settings)}")
    scheduler.start()
    log.info("jobs scheduled: %s", "; ".join(planned) or "none")
    return scheduler


def _counts(counter: Counter, *keys: str) -> dict[str, int]:
    return {k: counter[k] for k in keys}
