"""Command-line verbs of forwarding: ``gatekeeper forward list|retry``. Parsing and printing only.

The queue is :class:`store.outbox.Outbox` (through ``app.store.outbox``). ``forward list
--json`` is a stable interface (README.md, "Forwarding to the archive").
"""

from __future__ import annotations

import getpass
import json

from gateway.cli.text import plural
from store.forwarding import FORWARD_STATES
from store.outbox import QueueGroup


def register(verbs, common) -> None:
    forward = verbs.add_parser("forward", parents=[common],
                               help="the forwarding queue to the [forward] destinations: list, retry")
    sub = forward.add_subparsers(dest="forward_verb", metavar="ACTION", required=True)
    listing = sub.add_parser("list", parents=[common],
                             help="queued studies per destination, oldest first, with their instances' states")
    listing.add_argument("--state", choices=FORWARD_STATES, help="only studies with instances in this state")
    listing.add_argument("--json", action="store_true", help="machine-readable output, with every instance")
    listing.set_defaults(run=forward_list)
    retry = sub.add_parser("retry", parents=[common],
                           help="queue again now a study's failed or waiting instances, or every failed one (audited)")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("study", metavar="STUDY_UID", nargs="?")
    which.add_argument("--all-failed", action="store_true", help="every failed instance, of every study")
    retry.add_argument("--user", default=None, help="who asks (for the audit log; default: the login name)")
    retry.set_defaults(run=forward_retry)


def group_json(group: QueueGroup) -> dict:
    return {
        "study_instance_uid": group.study_instance_uid,
        "destination": group.destination,
        "state": group.state,
        "counts": group.counts,
        "attempts": group.attempts,
        "next_attempt_at": group.next_attempt_at.isoformat() if group.next_attempt_at else None,
        "last_status": f"0x{group.last_status:04X}" if group.last_status is not None else None,
        "last_error": group.last_error,
        "queued_at": group.enqueued_at.isoformat(),
        "instances": [{**i, "last_status": f"0x{i['last_status']:04X}" if i["last_status"] is not None else None}
                      for i in group.instances],
    }


def forward_list(app, args) -> int:
    groups = app.store.outbox.groups(state=args.state, instances=args.json)
    if args.json:
        print(json.dumps({"destinations": [d.name for d in app.settings.destinations],
                          "studies": [group_json(g) for g in groups]}, indent=2))
        return 0
    if not app.settings.destinations:
        print(f"no [forward] destination in {app.settings.source}; nothing is forwarded")
    if not groups:
        print("nothing queued" + (f" in state {args.state}" if args.state else ""))
        return 0
    for g in groups:
        counts = ", ".join(f"{n} {s}" for s, n in g.counts.items() if n)
        line = f"{g.study_instance_uid}  {g.destination}  {g.state}  ({counts}; queued {g.enqueued_at:%Y-%m-%d %H:%M})"
        if g.state in ("pending", "failed") and g.attempts:
            line += f"  attempts {g.attempts}"
            if g.next_attempt_at and g.state == "pending":
                line += f", next {g.next_attempt_at:%H:%M:%S}"
            if g.last_error:
                line += f": {g.last_error}"
        print(line)
    return 0


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "operator"


def forward_retry(app, args) -> int:
    user = args.user or _login_name()
    count = app.store.outbox.retry(study=args.study, all_failed=args.all_failed, user=user)
    what = f"study {args.study}" if args.study else "every failed instance"
    print(f"{plural(count, 'instance')} of {what} queued again; the running server sends "
          f"{'them' if count != 1 else 'it'} within seconds ('gatekeeper forward list' shows progress)"
          if count else f"nothing to retry for {what}: no failed or waiting instance")
    return 0
