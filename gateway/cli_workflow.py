"""Command-line verbs of the workflow around the gate: the scheduled jobs and the report.

``gatekeeper jobs list``, ``gatekeeper jobs run NAME`` and ``gatekeeper report``.
``report --json`` prints one stable JSON object (README.md, "Report JSON").
"""

from __future__ import annotations

import datetime as dt
import json
import logging

from gateway import jobs
from gateway.cli_types import iso_date
from gateway.errors import BadInput, Refused
from gateway.report import as_json, as_text
from gateway.report_query import load_report

log = logging.getLogger("gateway.jobs")

#: The report's period when --since is not given: the last 30 days.
DEFAULT_REPORT_DAYS = 30


def register(verbs) -> None:
    jobs_parser = verbs.add_parser("jobs", help="list the scheduled jobs, or run one now")
    sub = jobs_parser.add_subparsers(dest="jobs_verb", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="every job: name, schedule (from settings.toml), what it does")
    listing.set_defaults(run=list_jobs)
    run = sub.add_parser("run", help="run one job now, once (same effect as its scheduled run)")
    run.add_argument("name", metavar="NAME", help=f"one of: {', '.join(jobs.JOBS)}")
    run.set_defaults(run=run_job)

    report = verbs.add_parser("report", help="orders served and withheld, holds, clean-match rate, MPPS, auth units")
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
        raise BadInput(str(exc)) from None
    try:
        result = job.run(app)
    except Exception as exc:
        log.exception("job %s failed", job.name)
        raise Refused(f"job {job.name} failed: {exc}. The traceback is above; fix the cause and run it again.") from None
    print(result)
    return 0


def report_command(app, args) -> int:
    since = args.since or app.today() - dt.timedelta(days=DEFAULT_REPORT_DAYS)
    if since > app.today():
        raise BadInput(f"--since {since} is in the future; give a day on or before {app.today()}")
    report = load_report(since, app.now(), app.settings.policy)
    if args.json:
        print(json.dumps(as_json(report), indent=2))
    else:
        print(as_text(report))
    return 0
