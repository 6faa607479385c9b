"""Command-line verbs of the worklist gate: orders, auths, worklist.

``gatekeeper worklist --json`` prints one stable JSON object (documented in README.md,
"Worklist JSON"); scripts may rely on its keys.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from gateway.cli_types import iso_date
from gateway.errors import BadInput, Refused
from worklist import service
from worklist.gating import auth_date, auth_problems
from worklist.intake import IntakeError, parse_auths, parse_orders
from worklist.models import OrderRow


def register(verbs) -> None:
    orders = verbs.add_parser("orders", help="import orders, override a withheld order")
    sub = orders.add_subparsers(dest="orders_verb", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="import orders (JSON array or NDJSON); all or nothing")
    imp.add_argument("file", type=Path)
    imp.add_argument("--user", default="import", help="who imports (for the audit log)")
    imp.set_defaults(run=import_orders)
    ovr = sub.add_parser("override", help="serve a withheld order without an auth (audited)")
    ovr.add_argument("accession")
    ovr.add_argument("--user", required=True, help="who decides")
    ovr.add_argument("--reason", required=True, help="why the exam cannot wait")
    ovr.set_defaults(run=override)

    auths = verbs.add_parser("auths", help="import payer authorizations")
    sub = auths.add_subparsers(dest="auths_verb", metavar="ACTION", required=True)
    imp = sub.add_parser("import", help="import auths (JSON array, NDJSON or CSV); all or nothing")
    imp.add_argument("file", type=Path)
    imp.add_argument("--user", default="import", help="who imports (for the audit log)")
    imp.set_defaults(run=import_auths)

    wl = verbs.add_parser("worklist", help="list orders served or withheld; 'worklist why ACC' explains one")
    wl.add_argument("why", nargs="?", choices=["why"], help=argparse.SUPPRESS)
    wl.add_argument("accession", nargs="?", help="with 'why': the order to explain")
    wl.add_argument("--date", type=iso_date, help="scheduled day (YYYY-MM-DD; default today)")
    wl.add_argument("--station", help="scheduled station AE title")
    wl.add_argument("--json", action="store_true", help="machine-readable output (see README)")
    wl.set_defaults(run=worklist)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path} is not UTF-8 text; export it as UTF-8 and import again") from None


def _import(app, args, parse, store, noun: str) -> int:
    """Parse the whole file first (all or nothing), then upsert it in one transaction."""
    try:
        records = parse(_read(args.file), str(args.file))
    except IntakeError as exc:
        raise BadInput(str(exc)) from None
    result = store(records, app.now(), user=args.user, source=str(args.file))
    print(f"{args.file}: {len(records)} {noun} imported ({result}).")
    return 0


def import_orders(app, args) -> int:
    return _import(app, args, parse_orders, service.import_orders, "orders")


def import_auths(app, args) -> int:
    return _import(app, args, parse_auths, service.import_auths, "auths")


def override(app, args) -> int:
    try:
        service.add_override(args.accession, args.user, args.reason, app.now())
    except LookupError as exc:
        raise Refused(str(exc)) from None
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    order = service.find_order(args.accession)
    decision = service.decide_all([order], app.settings.policy, app.today())[0]
    print(f"{args.accession}: override recorded for {args.user}. Now {decision.summary()}")
    return 0


def decision_json(order, decision) -> dict:
    """One order's entry in ``worklist --json`` (keys are a stable interface)."""
    return {
        "accession_number": order.accession_number,
        "scheduled_start": order.scheduled_start.isoformat(),
        "station_ae": order.station_ae,
        "modality": order.modality,
        "cpt": order.cpt,
        "payer_id": order.payer_id,
        "status": order.status,
        "served": decision.served,
        "basis": decision.basis,
        "auth_number": decision.auth_number,
        "reasons": [{"code": r.code, "text": r.text} for r in decision.reasons],
        "override": None if decision.override is None else {
            "user": decision.override.user,
            "reason": decision.override.reason,
            "at": decision.override.at.isoformat(),
        },
    }


def worklist(app, args) -> int:
    if args.why:
        if not args.accession:
            raise BadInput("say which order: gatekeeper worklist why ACCESSION")
        return why(app, args.accession, as_json=args.json)
    day = args.date or app.today()
    start = dt.datetime.combine(day, dt.time.min)
    conditions = [OrderRow.scheduled_start >= start, OrderRow.scheduled_start < start + dt.timedelta(days=1)]
    if args.station:
        conditions.append(OrderRow.station_ae == args.station)
    orders = service.orders_where(*conditions)
    decisions = service.decide_all(orders, app.settings.policy, app.today())
    if args.json:
        print(json.dumps({
            "date": day.isoformat(),
            "evaluated_at": app.now().isoformat(),
            "station_ae": args.station,
            "orders": [decision_json(o, d) for o, d in zip(orders, decisions)],
        }, indent=2))
        return 0
    served = sum(d.served for d in decisions)
    where = f" at {args.station}" if args.station else ""
    print(f"Worklist for {day}{where}: {served} served, {len(orders) - served} withheld.")
    for order, decision in zip(orders, decisions):
        outcome = "SERVED  " if decision.served else "WITHHELD"
        detail = (decision.auth_number and f"auth {decision.auth_number}") or decision.basis or ""
        if not decision.served:
            detail = " ".join(decision.codes)
        print(f"  {outcome} {order.accession_number:<16} {order.scheduled_start:%H:%M} "
              f"{order.station_ae:<16} {order.modality:<3} {order.cpt} {detail}")
    if served < len(orders):
        print("Run 'gatekeeper worklist why ACCESSION' to see why an order is withheld.")
    return 0


def why(app, accession: str, as_json: bool = False) -> int:
    order = service.find_order(accession)
    if order is None:
        raise Refused(f"no order with accession number {accession!r}; check the number or import the order")
    decision = service.decide_all([order], app.settings.policy, app.today())[0]
    auths = service.auths_for_patients([order.patient_id]).get(order.patient_id, [])
    on = auth_date(order, app.today())
    if as_json:
        entry = decision_json(order, decision)
        entry["auths_on_file"] = [
            {"auth_number": a.auth_number, "problems": [r.code for r in auth_problems(order, a, on)]}
            for a in auths
        ]
        print(json.dumps(entry, indent=2))
        return 0
    print(f"Order {order.accession_number}: CPT {order.cpt} {order.description}".rstrip()
          + f", {order.modality} at {order.station_ae} on {order.scheduled_start:%Y-%m-%d %H:%M}, "
          f"payer {order.payer_id}, status {order.status}.")
    needs = app.settings.policy.requires_auth(order.payer_id, order.cpt)
    print(f"Payer {order.payer_id} {'requires' if needs else 'does not require'} a prior authorization for CPT {order.cpt}.")
    print(f"Decision as of {app.today()}: {decision.summary()}")
    if not decision.served and decision.auth_number:
        print(f"Compared against auth {decision.auth_number}, the closest of {len(auths)} on file for this patient:")
    for reason in decision.reasons:
        print(f"  {reason.code}: {reason.text}")
    others = [a for a in auths if a.auth_number != decision.auth_number]
    if others and needs:
        print("Other auths on file for this patient:")
        for a in others:
            problems = [r.code for r in auth_problems(order, a, on)] if a.payer_id == order.payer_id else ["OTHER_PAYER"]
            print(f"  {a.auth_number}: {', '.join(problems) or 'would cover this order'}")
    return 0
