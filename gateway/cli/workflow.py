"""Command-line verbs of the workflow around the gate: the scheduled jobs and the report.

``gatekeeper jobs list``, ``gatekeeper jobs run NAME`` and ``gatekeeper report``. Parsing
and printing only. ``report --json`` prints one stable JSON object (README.md, "Report JSON").
"""

from __future__ import annotations

import datetime as dt
import json
import logging

from gateway import jobs
from gateway.cli.text import plural
from infra.errors import GatekeeperError, InvalidInput
from store.report import Report, as_json

log = logging.getLogger("gateway.jobs")

#: The report's period when --since is not given: the last 30 days.
DEFAULT_REPORT_DAYS = 30


def register(verbs, common) -> None:
    from gateway.cli.main import iso_date

    jobs_parser = verbs.add_parser("jobs", parents=[common], help="list the scheduled jobs, or run one now")
    sub = jobs_parser.add_subparsers(dest="jobs_verb", metavar="ACTION", required=True)
    listing = sub.add_parser("list", parents=[common], help="every job: name, schedule (from settings.toml), what it does")
    listing.set_defaults(run=list_jobs)
    run = sub.add_parser("run", parents=[common], help="run one job now, once (same effect as its scheduled run)")
    run.add_argument("name", metavar="NAME", help=f"one of: {', '.join(jobs.JOBS)}")
    run.set_defaults(run=run_job)

    report = verbs.add_parser("report", parents=[common], help="orders served and withheld, holds, clean-match rate, MPPS, auth units")
    report.add_argument("--since", type=iso_date, metavar="D",
                        help=f"first day of the period (YYYY-MM-DD; default {DEFAULT_REPORT_DAYS} days ago)")
    report.add_argument("--json", action="store_true", help="machine-readable output (see README)")
    report.set_defaults(run=report_command)


def list_jobs(app, args) -> int:
    s = app.settings
    state = "run inside 'gatekeeper serve'" if s.jobs_enabled else "NOT run by 'gatekeeper serve' (jobs.enabled = false)"
    print(f"Scheduled jobs ({state}; times are local):")
    width = max(len(name) for name in jobs.JOBS)
    for job in jobs.JOBS.values():
        print(f"  {job.name:<{width}}  {job.schedule(s)}")
        print(f"  {'':<{width}}  {job.description}")
    print("Run one now with 'gatekeeper jobs run NAME'.")
    return 0


def run_job(app, args) -> int:
    try:
        job = jobs.get(args.name)
    except jobs.UnknownJob as exc:
        raise InvalidInput(str(exc)) from None
    try:
        result = job.run(app)
    except Exception as exc:
        log.exception("job %s failed", job.name)
        raise GatekeeperError(f"job {job.name} failed: {exc}. The traceback is above; fix the cause and run it "
                              "again.") from None
    print(result)
    return 0


def report_command(app, args) -> int:
    since = args.since or app.today() - dt.timedelta(days=DEFAULT_REPORT_DAYS)
    if since > app.today():
        raise InvalidInput(f"--since {since} is in the future; give a day on or before {app.today()}")
    report = app.store.report(since)
    if args.json:
        print(json.dumps(as_json(report), indent=2))
    else:
        print(as_text(report))
    return 0


def _hours(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} h"


def as_text(r: Report) -> str:
    """The report for people: one figure a line, reasons and states with a count only when non-zero."""
    rate = "n/a (no studies received)" if r.clean_match_rate is None else f"{r.clean_match_rate:.1%}"
    lines = [
        f"Report since {r.since} (as of {r.generated_at:%Y-%m-%d %H:%M})",
        "",
        f"Orders scheduled since {r.since}: {r.orders_total} "
        f"({', '.join(f'{n} {s}' for s, n in r.orders_by_status.items() if n) or 'none'})",
        f"  open orders: {r.open_orders}, served {r.served}, withheld {r.withheld}",
    ]
    lines += [f"    served {basis}: {n}" for basis, n in r.served_by_basis.items() if n]
    lines += [f"    withheld {code}: {n}" for code, n in r.withheld_by_reason.items() if n]
    lines += [
        f"Overrides: {r.overrides} (on {plural(r.overridden_orders, 'order')})",
        f"Studies received: {r.studies_received} "
        f"({', '.join(f'{n} {s}' for s, n in r.studies_by_state.items() if n) or 'none'})",
        f"  clean match (archived, never held): {r.clean}, rate {rate}",
        f"Held studies: {r.held_studies} (still held {r.still_held}), median time held {_hours(r.median_hours_held)}",
        f"  archived studies held again by a non-matching instance: {r.reopened}",
    ]
    lines += [
        f"    {code}: {plural(h.studies, 'study')}, median held {_hours(h.median_hours_held)}"
        for code, h in r.held_by_reason.items() if h.studies
    ]
    lines += [
        f"MPPS completed: {r.mpps_completed}; orders completed from images without MPPS: {r.completed_from_images}",
        f"Auth units used: {r.auth_units_used} (on {plural(r.auths_drawn_on, 'auth')})",
        f"Reports of the orders: {', '.join(f'{n} {s}' for s, n in r.orders_by_report_status.items() if n) or 'none'}",
        f"  reports overdue (flagged): {r.reports_overdue}; claim deadlines near (flagged): {r.deadlines_near}",
    ]
    f = r.forwarding
    if f.by_state:
        oldest = "none" if f.oldest_pending_seconds is None else f"{f.oldest_pending_seconds / 60:.0f} min"
        lines.append(f"Forwarding now: {sum(f.backlog.values())} instances waiting, oldest pending {oldest}")
        for name, counts in f.by_state.items():
            lines.append(f"  {name}: backlog {f.backlog.get(name, 0)}, "
                         + ", ".join(f"{n} {state}" for state, n in counts.items()))
        if f.failures_by_status:
            lines.append("  failed by last status: " + ", ".join(f"{s} {n}" for s, n in f.failures_by_status.items()))
    return "\n".join(lines)
