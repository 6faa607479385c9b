"""Command-line verbs of the audit log: ``gatekeeper audit list``. Parsing and printing only.

The log is read through :func:`infra.audit.listing`. ``--json`` output is a stable
interface (README.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json

from gateway.cli.text import plural
from infra import audit

DEFAULT_LIMIT = 100


def since_moment(text: str) -> dt.datetime:
    """``--since``: a day (YYYY-MM-DD, from its midnight) or a local time (YYYY-MM-DDTHH:MM[:SS])."""
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date or time; write YYYY-MM-DD or "
                                         f"YYYY-MM-DDTHH:MM") from None


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def register(verbs, common) -> None:
    parser = verbs.add_parser("audit", parents=[common], help="read the local audit log")
    sub = parser.add_subparsers(dest="audit_verb", metavar="ACTION", required=True)
    listing = sub.add_parser(
        "list", parents=[common],
        help="audit events, newest first (--oldest-first for the other way), at most --limit",
        description="Audit events matching every filter given, newest first unless --oldest-first. "
                    "--study and --accession match the event's subject or the study or accession it names.")
    listing.add_argument("--since", type=since_moment, metavar="D",
                         help="events from this day (YYYY-MM-DD) or local time (YYYY-MM-DDTHH:MM) on")
    listing.add_argument("--actor", metavar="U", help="events by this user (a person, job:NAME or an AE title)")
    listing.add_argument("--study", metavar="UID", help="events about this Study Instance UID")
    listing.add_argument("--accession", metavar="ACC", help="events about this accession number")
    listing.add_argument("--limit", type=positive, default=DEFAULT_LIMIT, metavar="N",
                         help=f"at most N events (default {DEFAULT_LIMIT})")
    listing.add_argument("--oldest-first", action="store_true", help="oldest first instead of newest first")
    listing.add_argument("--json", action="store_true", help="machine-readable output (see README)")
    listing.set_defaults(run=audit_list)


def event_json(event: audit.AuditEvent) -> dict:
    """One event in ``audit list --json``."""
    try:
        detail = json.loads(event.detail or "{}")
    except ValueError:
        detail = {"unparsed": event.detail}
    return {"id": event.id, "at": event.at.isoformat(), "user": event.user, "action": event.action,
            "subject": event.subject, "reason": event.reason, "detail": detail}


def audit_list(app, args) -> int:
    events = audit.listing(since=args.since, actor=args.actor, study=args.study, accession=args.accession,
                           limit=args.limit, oldest_first=args.oldest_first)
    order = "oldest first" if args.oldest_first else "newest first"
    if args.json:
        print(json.dumps({"order": order, "limit": args.limit, "events": [event_json(e) for e in events]}, indent=2))
        return 0
    if not events:
        print("No audit events match.")
        return 0
    print(f"{plural(len(events), 'audit event')}, {order}"
          f"{' (the limit: --limit N shows more)' if len(events) == args.limit else ''}:")
    for e in events:
        why = f": {e.reason}" if e.reason else ""
        print(f"  {e.at:%Y-%m-%d %H:%M:%S}  #{e.id:<6} {e.action:<24} {e.subject}  by {e.user}{why}")
    return 0
