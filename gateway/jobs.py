"""The scheduled jobs (rule 6 of docs/rules.md): what runs when, each one call into the core.

- ``reevaluate``: rule 1 again over the open orders (:meth:`worklist.gate.Gate.reevaluate`);
- ``expiring_auths``: warn once of orders due soon whose auth will not cover them
  (:meth:`worklist.gate.Gate.warn_expiring_auths`);
- ``held_age``: flag held studies older than ``storage.held_alert_hours``
  (:meth:`store.store.Store.flag_aged_holds`);
- ``purge_rejected``: delete the files of rejected studies past retention
  (:meth:`store.store.Store.purge_rejected`);
- ``complete_without_mpps``: complete from their images the orders whose modality sent no
  MPPS (:meth:`store.followup.Followup.complete_without_mpps`);
- ``report_watch``: flag overdue reports and claim deadlines near
  (:meth:`store.followup.Followup.watch_reports`).
- ``forward_purge``: remove the local copy of studies every ``[forward]`` destination
  has, past ``storage.forwarded_retention_days`` (:meth:`store.outbox.Outbox.remove_forwarded`).

:func:`start` schedules them on a :class:`BackgroundScheduler` inside ``gatekeeper serve``
(apscheduler's triggers follow the wall clock; the use cases read the app's clock).
Every scheduled run goes through :func:`guarded`: a failure is logged with its traceback
and the job runs again at its next time; it never stops the server.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from gateway.app import App
from gateway.settings import Settings
from infra.errors import NotFound
from worklist import watch

log = logging.getLogger("gateway.jobs")


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


# ------------------------------------------------------------------------ the bodies: one call each


def reevaluate(app: App, chunk_size: int | None = None) -> JobResult:
    """Re-decide the open orders; audit each flip between served and withheld."""
    done = app.gate.reevaluate(chunk_size) if chunk_size else app.gate.reevaluate()
    c = done.counts
    summary = (f"{c['evaluated']} orders evaluated as of {done.as_of}: {c[watch.WITHHELD_NOW]} now withheld, "
               f"{c[watch.SERVED_NOW]} now served, {c[watch.FIRST_SEEN]} first seen")
    return JobResult("reevaluate", summary, dict(c))


def expiring_auths(app: App) -> JobResult:
    """Warn once of each order due soon whose auth will not cover it."""
    done = app.gate.warn_expiring_auths()
    summary = (f"{done.due} open orders due {done.start:%Y-%m-%d} to {done.end:%Y-%m-%d}: "
               f"{len(done.risks)} at risk, {len(done.warned)} newly warned of")
    return JobResult("expiring_auths", summary, {"due": done.due, "at_risk": len(done.risks),
                                                 "warned": len(done.warned)})


def held_age(app: App) -> JobResult:
    """Flag held studies older than ``storage.held_alert_hours``."""
    done = app.store.flag_aged_holds()
    summary = (f"{done.checked} held studies not yet flagged, {done.flagged} now flagged as held over "
               f"{done.alert_hours} hours")
    return JobResult("held_age", summary, {"checked": done.checked, "flagged": done.flagged})


def purge_rejected(app: App) -> JobResult:
    """Delete the files of rejected studies past retention; raises when some could not be purged."""
    done = app.store.purge_rejected()
    summary = (f"{done.rejected} rejected studies, {done.due} past the {done.retention_days}-day retention: "
               f"{done.purged} purged ({done.files_deleted} files deleted)"
               + (f", {done.failed} failed (see the errors above)" if done.failed else ""))
    if done.failed:
        raise RuntimeError(summary)
    return JobResult("purge_rejected", summary, {"rejected": done.rejected, "due": done.due, "purged": done.purged,
                                                 "files_deleted": done.files_deleted, "failed": done.failed})


def complete_without_mpps(app: App) -> JobResult:
    """Complete the orders whose study was archived without an MPPS in time; use each auth unit once."""
    done = app.followup.complete_without_mpps()
    summary = (f"{done.candidates} scheduled orders with an archived study: {done.completed} completed from their "
               f"images after {done.minutes} min without MPPS ({done.units_used} auth units used)")
    return JobResult("complete_without_mpps", summary, {"candidates": done.candidates, "completed": done.completed,
                                                        "units_used": done.units_used})


def report_watch(app: App) -> JobResult:
    """Flag once each overdue report and each claim deadline near while the report is not final."""
    done = app.followup.watch_reports()
    summary = (f"{done.studies_checked} archived studies and {done.exams_checked} performed exams checked: "
               f"{done.overdue} reports overdue ({done.overdue_flagged} newly flagged), "
               f"{done.deadlines_near} claim deadlines near ({done.deadlines_flagged} newly flagged)")
    return JobResult("report_watch", summary, {"overdue": done.overdue, "overdue_flagged": done.overdue_flagged,
                                               "deadlines_near": done.deadlines_near,
                                               "deadlines_flagged": done.deadlines_flagged})
def forward_purge(app: App) -> JobResult:
    """Remove the local copy of forwarded studies every destination has, past ``storage.forwarded_retention_days``."""
    done = app.store.outbox.remove_forwarded()
    if done.retention_days <= 0:
        return JobResult("forward_purge", "storage.forwarded_retention_days is 0: forwarded studies are kept",
                         {"candidates": 0, "removed": 0, "files_deleted": 0})
    summary = (f"{done.candidates} archived studies in the forwarding queue: {done.removed} at every destination "
               f"for {done.retention_days} days and removed ({done.files_deleted} files deleted)")
    return JobResult("forward_purge", summary, {"candidates": done.candidates, "removed": done.removed,
                                                  "files_deleted": done.files_deleted})


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
        Job("complete_without_mpps",
            "complete from its images an order whose study was archived with no MPPS in time; auth unit used once",
            complete_without_mpps,
            lambda s: _every(s.complete_check_minutes),
            lambda s: (f"every {s.complete_check_minutes} min" if s.complete_check_minutes else "by hand only")
            + f" (after {s.complete_without_mpps_minutes} min without MPPS)"),
        Job("report_watch",
            "flag reports not final after the payer's report_due_days, and claim deadlines near",
            report_watch,
            lambda s: [_daily(s.report_watch_hour)],
            lambda s: f"daily at {s.report_watch_hour:02d}:00 (deadlines within {s.filing_alert_days} days)"),
        Job("forward_purge",
            "remove the local copy of studies every [forward] destination has, past "
            "storage.forwarded_retention_days",
            forward_purge,
            lambda s: [_daily(s.purge_hour, 30)],
            lambda s: f"daily at {s.purge_hour:02d}:30 " + (f"(retention {s.forwarded_retention_days} days)"
                                                            if s.forwarded_retention_days else
                                                            "(off: storage.forwarded_retention_days = 0)")),
    )
}


class UnknownJob(NotFound):
    """No job has that name; the message lists the names."""


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


def guarded(app: App, job: Job, metrics=None) -> JobResult | None:
    """Run ``job`` and never raise: a failure is logged at ERROR with its traceback.

    Returns the result, or None when the job failed; the scheduler runs it again at its
    next time. Each run is counted in ``metrics`` (:class:`gateway.metrics.Metrics`) when given.
    """
    started = time.monotonic()
    try:
        result = job.run(app)
    except Exception as exc:
        if metrics is not None:
            metrics.job(job.name, ok=False)
        log.exception("job %s failed after %.1fs: %s; it runs again at its next time (%s)",
                      job.name, time.monotonic() - started, exc, job.schedule(app.settings))
        return None
    if metrics is not None:
        metrics.job(job.name, ok=True)
    log.info("job %s: %s (%.1fs)", job.name, result.summary, time.monotonic() - started)
    return result


def _scheduled(app: App, job: Job, metrics=None) -> None:
    """The scheduler's entry point: a database connection of its own for this run, then :func:`guarded`."""
    try:
        with app.db.connection_context():
            guarded(app, job, metrics)
    except Exception:  # the connection itself failed
        if metrics is not None:
            metrics.job(job.name, ok=False)
        log.exception("job %s could not reach the database; it runs again at its next time", job.name)


def start(app: App, jobs: Iterable[Job] | None = None, metrics=None) -> BackgroundScheduler | None:
    """Schedule ``jobs`` (default: all, unless ``jobs.enabled`` is false: then None) on a
    started :class:`BackgroundScheduler`.

    A run that finds the previous one still going is skipped, and missed runs are
    coalesced into one. A job whose interval is 0 minutes is not scheduled (it still
    runs by hand).
    """
    if jobs is None and not app.settings.jobs_enabled:
        return None
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # no line per run at INFO
    scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 600})
    planned = []
    for job in JOBS.values() if jobs is None else jobs:
        triggers = job.triggers(app.settings)
        if not triggers:
            log.info("job %s is not scheduled (interval 0); run it with 'gatekeeper jobs run %s'", job.name, job.name)
            continue
        trigger = triggers[0] if len(triggers) == 1 else OrTrigger(triggers)
        scheduler.add_job(_scheduled, trigger, args=(app, job, metrics), id=job.name, name=job.name)
        planned.append(f"{job.name} {job.schedule(app.settings)}")
    scheduler.start()
    log.info("jobs scheduled: %s", "; ".join(planned) or "none")
    return scheduler
