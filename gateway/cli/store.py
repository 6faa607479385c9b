"""Command-line verbs of the store: review held studies, list archived ones. Parsing and printing only.

``gatekeeper held list|show|release|correct|reject`` and ``gatekeeper studies list``.
The logic is in :mod:`store.review` (through :class:`store.store.Store`). A held study
is named by its Study Instance UID or by its accession number.
``--json`` output is a stable interface (README.md).
"""

from __future__ import annotations

import json
import sys

from gateway.cli.text import plural
from gateway.shapes import held_detail_json, held_json, studies_json
from store.review import AUDIT_CORRECTED, AUDIT_RECHECKED, AUDIT_REJECTED, AmbiguousAccession, HeldStudy, ReviewResult

_ACTIONS = {
    "release": "archive the study as it is",
    "correct": "set patient and accession attributes from the order (originals kept), then archive",
    "reject": "move the study to rejected/ (purged after storage.rejected_retention_days)",
    "recheck": "reconcile again against the order as it is now (after a patient update); archive it only "
               "when nothing holds it any more",
}


def register(verbs, common) -> None:
    held = verbs.add_parser("held", parents=[common], help="review held studies: list, show, release, correct, reject")
    sub = held.add_subparsers(dest="held_verb", metavar="ACTION", required=True)
    listing = sub.add_parser("list", parents=[common], help="held studies, oldest first, with the codes that hold them")
    listing.add_argument("--json", action="store_true", help="machine-readable output (see README)")
    listing.set_defaults(run=held_list)
    show = sub.add_parser("show", parents=[common],
                          help="one held study: each finding, instance value against order value")
    show.add_argument("study", metavar="STUDY_UID_OR_ACC")
    show.add_argument("--json", action="store_true", help="machine-readable output (see README)")
    show.set_defaults(run=held_show)
    for name, text in _ACTIONS.items():
        action = sub.add_parser(name, parents=[common], help=f"{text} (audited)")
        action.add_argument("study", metavar="STUDY_UID_OR_ACC")
        if name == "correct":
            action.add_argument("--accession", metavar="ACC",
                                help="reassign the study to this order first (default: its own order)")
            action.add_argument("--patient-change", action="store_true",
                                help="confirm that the order is another patient's: the images move to that patient")
        action.add_argument("--user", required=True, help="who decides (for the audit log)")
        action.add_argument("--reason", required=True, help="why (for the audit log)")
        action.set_defaults(run=held_action, action=name)

    studies = verbs.add_parser("studies", parents=[common], help="list archived studies with their orders")
    sub = studies.add_subparsers(dest="studies_verb", metavar="ACTION", required=True)
    listing = sub.add_parser("list", parents=[common], help="archived studies, newest first")
    listing.add_argument("--accession", metavar="ACC", help="only the studies of this accession number")
    listing.add_argument("--json", action="store_true", help="machine-readable output (see README)")
    listing.set_defaults(run=studies_list)


def held_list(app, args) -> int:
    studies = app.store.held_studies()
    if args.json:
        print(json.dumps({"held": [held_json(s) for s in studies]}, indent=2))
        return 0
    if not studies:
        print("No held studies.")
        return 0
    print(f"{plural(len(studies), 'held study', 'held studies')}, oldest first:")
    _print_held(studies)
    print("Run 'gatekeeper held show STUDY_UID' (or the accession number) to compare a study with its order.")
    return 0


def _print_held(studies: list[HeldStudy]) -> None:
    for s in studies:
        print(f"  {s.held_since:%Y-%m-%d %H:%M}  {s.study_instance_uid}  {s.accession_number or '(no accession)':<16} "
              f"{s.instance_count:>5} inst.  {' '.join(s.codes)}{'  (reopened: was archived)' if s.reopened else ''}")


def _study(app, named: str) -> str:
    """The Study Instance UID a person named (a UID, or the accession number of one held study)."""
    try:
        return app.store.find_held(named)
    except AmbiguousAccession as exc:
        print(f"Accession {exc.accession} has {plural(len(exc.studies), 'held study', 'held studies')}:",
              file=sys.stderr)
        for s in exc.studies:
            print(f"  {s.held_since:%Y-%m-%d %H:%M}  {s.study_instance_uid}  {s.instance_count:>5} inst.  "
                  f"{' '.join(s.codes)}", file=sys.stderr)
        raise


def held_show(app, args) -> int:
    detail = app.store.held_study(_study(app, args.study))
    if args.json:
        print(json.dumps(held_detail_json(detail), indent=2))
        return 0
    s = detail.study
    senders = ", ".join(detail.received_from) or "unknown"
    print(f"Study {s.study_instance_uid}: accession {s.accession_number or '(none)'}, held since "
          f"{s.held_since:%Y-%m-%d %H:%M}, {plural(s.instance_count, 'instance')} from {senders}.")
    o = detail.order
    if o is None:
        print("Order: none matches this accession number.")
    else:
        print(f"Order {o.accession_number} ({o.status}): CPT {o.cpt} {o.description}".rstrip()
              + f", {o.modality}{' ' + o.laterality if o.laterality else ''} at {o.station_ae} on "
              f"{o.scheduled_start:%Y-%m-%d %H:%M}; patient {o.patient_id} {o.patient_name}, born "
              f"{o.birth_date:%Y-%m-%d}, sex {o.sex or '-'}.")
    width = max([len(f.instance_value or "(empty)") for f in detail.findings] + [14])
    print(f"Findings:\n  {'code':<22} {'on the images':<{width}}   {'on the order'}")
    for f in detail.findings:
        note = "" if f.holds else "  (warning only)"
        print(f"  {f.code:<22} {f.instance_value or '(empty)':<{width}} | {f.order_value or '(empty)'}"
              f"   {plural(f.instances, 'instance')}{note}")
        print(f"  {'':<22} {f.message}")
    print(f"Decide: gatekeeper held release|correct|reject {s.study_instance_uid} --user NAME --reason TEXT")
    return 0


def held_action(app, args) -> int:
    store = app.store
    study = _study(app, args.study)
    if args.action == "release":
        result = store.release(study, user=args.user, reason=args.reason)
    elif args.action == "reject":
        result = store.reject(study, user=args.user, reason=args.reason)
    elif args.action == "recheck":
        result = store.recheck(study, user=args.user, reason=args.reason)
        print(_done(result, app.settings.rejected_retention_days))
        return 0 if not result.remaining_codes else 1
    else:
        result = store.correct(study, user=args.user, reason=args.reason, accession=args.accession,
                               patient_change=args.patient_change)
    print(_done(result, app.settings.rejected_retention_days))
    return 0


def _done(result: ReviewResult, retention_days: int) -> str:
    study = f"Study {result.study_instance_uid} ({plural(result.instances, 'instance')})"
    if result.action == AUDIT_REJECTED:
        return (f"{study} rejected: moved to rejected/, deleted after {plural(retention_days, 'day')} unless "
                "it is received again.")
    if result.action == AUDIT_RECHECKED:
        if result.remaining_codes:
            return (f"{study} checked again against order {result.accession_number}: still held for "
                    f"{', '.join(result.remaining_codes)}. 'gatekeeper held show' shows each difference; fix the "
                    f"order in the RIS, or correct, release or reject the study.")
        return f"{study} checked again against order {result.accession_number}: nothing holds it; released and archived."
    if result.action == AUDIT_CORRECTED:
        text = (f"{study} corrected from order {result.accession_number} and archived; changed: "
                f"{', '.join(result.changed) or 'nothing (the images already matched)'}.")
        if result.remaining_codes:
            text += (f" Still differs from the order (correction cannot fix these): "
                     f"{', '.join(result.remaining_codes)}.")
        return text
    return f"{study} released and archived as it is."


def studies_list(app, args) -> int:
    studies = app.store.archived_studies(args.accession)
    if args.json:
        print(json.dumps({"studies": [studies_json(s) for s in studies]}, indent=2))
        return 0
    where = f" for accession {args.accession}" if args.accession else ""
    print(f"{plural(len(studies), 'archived study', 'archived studies')}{where}, newest first:")
    for s in studies:
        o = s.order
        order = f"{o.accession_number} CPT {o.cpt} {o.modality} {o.status}" if o else "no order"
        print(f"  {s.last_received_at:%Y-%m-%d %H:%M}  {s.study_instance_uid}  {s.instance_count:>5} inst.  {order}")
    return 0
