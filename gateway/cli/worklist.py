"""Command-line verbs of the worklist gate: orders, auths, worklist. Parsing and printing only.

``gatekeeper worklist --json`` prints one stable JSON object (documented in README.md,
"Worklist JSON"); scripts may rely on its keys.
"""

from __future__ import annotations

import json
from pathlib import Path

from gateway.cli.text import plural
from gateway.shapes import day_json, why_json
from infra.errors import InvalidInput
from worklist.gate import Explanation


def register(verbs, common) -> None:
    from gateway.cli.main import iso_date

    orders = verbs.add_parser("orders", parents=[common], help="import orders, override a withheld order")
    sub = orders.add_subparsers(dest="orders_verb", metavar="ACTION", required=True)
    imp = sub.add_parser("import", parents=[common], help="import orders (JSON array or NDJSON); all or nothing")
    imp.add_argument("file", type=Path)
    imp.add_argument("--user", default="import", help="who imports (for the audit log)")
    imp.set_defaults(run=import_orders)
    ovr = sub.add_parser("override", parents=[common], help="serve a withheld order without an auth (audited)")
    ovr.add_argument("accession")
    ovr.add_argument("--user", required=True, help="who decides")
    ovr.add_argument("--reason", required=True, help="why the exam cannot wait")
    ovr.set_defaults(run=override)

    auths = verbs.add_parser("auths", parents=[common], help="import payer authorizations")
    sub = auths.add_subparsers(dest="auths_verb", metavar="ACTION", required=True)
    imp = sub.add_parser("import", parents=[common], help="import auths (JSON array, NDJSON or CSV); all or nothing")
    imp.add_argument("file", type=Path)
    imp.add_argument("--user", default="import", help="who imports (for the audit log)")
    imp.set_defaults(run=import_auths)

    wl = verbs.add_parser("worklist", parents=[common],
                          help="list orders served or withheld; 'worklist why ACC' explains one")
    wl.add_argument("words", nargs="*", metavar="why ACC", help="'why ACCESSION' explains one order")
    wl.add_argument("--date", type=iso_date, help="scheduled day (YYYY-MM-DD; default today)")
    wl.add_argument("--station", help="scheduled station AE title")
    wl.add_argument("--json", action="store_true", help="machine-readable output (see README)")
    wl.set_defaults(run=worklist)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}; check the path") from None
    except UnicodeDecodeError:
        raise InvalidInput(f"{path} is not UTF-8 text; export it as UTF-8 and import again") from None


def import_orders(app, args) -> int:
    count, result = app.gate.import_orders_text(_read(args.file), str(args.file), user=args.user)
    print(f"{args.file}: {plural(count, 'order')} imported ({result}).")
    return 0


def import_auths(app, args) -> int:
    count, result = app.gate.import_auths_text(_read(args.file), str(args.file), user=args.user)
    print(f"{args.file}: {plural(count, 'auth')} imported ({result}).")
    return 0


def override(app, args) -> int:
    entry = app.gate.override(args.accession, user=args.user, reason=args.reason)
    print(f"{args.accession}: override recorded for {args.user}. Now {entry.decision.summary()}")
    return 0


def worklist(app, args) -> int:
    words = args.words
    if words and words[0] == "why":
        if len(words) != 2:
            raise InvalidInput("say which order: gatekeeper worklist why ACCESSION")
        return why(app, words[1], as_json=args.json)
    if words:
        raise InvalidInput(f"to explain one order, run: gatekeeper worklist why {words[0]}"
                           if len(words) == 1 else "use: gatekeeper worklist [--date D] [--station AE], "
                                                   "or gatekeeper worklist why ACCESSION")
    day = args.date or app.today()
    entries = app.gate.day(day, args.station)
    if args.json:
        print(json.dumps(day_json(day, app.now(), args.station, entries), indent=2))
        return 0
    served = sum(e.decision.served for e in entries)
    where = f" at {args.station}" if args.station else ""
    print(f"Worklist for {day}{where}: {served} served, {len(entries) - served} withheld.")
    for e in entries:
        order, decision = e.order, e.decision
        outcome = "SERVED  " if decision.served else "WITHHELD"
        detail = (decision.auth_number and f"auth {decision.auth_number}") or decision.basis or ""
        if not decision.served:
            detail = " ".join(decision.codes)
        print(f"  {outcome} {order.accession_number:<16} {order.scheduled_start:%H:%M} "
              f"{order.station_ae:<16} {order.modality:<3} {order.cpt} {detail}")
    if served < len(entries):
        print("Run 'gatekeeper worklist why ACCESSION' to see why an order is withheld.")
    return 0


def why(app, accession: str, as_json: bool = False) -> int:
    found = app.gate.explain(accession)
    if as_json:
        print(json.dumps(why_json(found), indent=2))
        return 0
    print("\n".join(explanation_lines(found)))
    return 0


def explanation_lines(found: Explanation) -> list[str]:
    """``worklist why`` for people: the order, the payer's rule, the decision, each reason once."""
    order, decision = found.order, found.decision
    lines = [
        f"Order {order.accession_number}: CPT {order.cpt} {order.description}".rstrip()
        + f", {order.modality} at {order.station_ae} on {order.scheduled_start:%Y-%m-%d %H:%M}, "
        f"payer {order.payer_id}, status {order.status}.",
        f"Payer {order.payer_id} {'requires' if found.needs_auth else 'does not require'} a prior "
        f"authorization for CPT {order.cpt}.",
    ]
    if found.necessity:
        accepted = sorted({code for p in found.necessity for code in p.covered_icd10})
        lines.append(f"Payer {order.payer_id} accepts CPT {order.cpt} for diagnoses {', '.join(accepted)} "
                     f"(necessity policy); the order's diagnoses: {', '.join(order.diagnoses) or 'none'}.")
    if decision.served:
        lines.append(f"Decision as of {found.as_of}: {decision.summary()}.")
        if decision.reasons:
            lines.append(f"The override set aside {plural(len(decision.reasons), 'reason')}:")
    else:
        lines.append(f"Decision as of {found.as_of}: withheld, for {plural(len(decision.reasons), 'reason')}.")
        if decision.auth_number:
            lines.append(f"Compared against auth {decision.auth_number}, the closest of "
                         f"{plural(len(found.auths_on_file), 'auth')} on file for this patient:")
    lines += [f"  {r.code}: {r.text}" for r in decision.reasons]
    others = [a for a in found.auths_on_file if a.auth.auth_number != decision.auth_number]
    if others and found.needs_auth:
        lines.append("Other auths on file for this patient:")
        for a in others:
            problems = ["OTHER_PAYER"] if a.other_payer else [r.code for r in a.problems]
            lines.append(f"  {a.auth.auth_number}: {', '.join(problems) or 'would cover this order'}")
    return lines
