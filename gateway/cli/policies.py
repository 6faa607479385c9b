"""Command-line verbs of the medical necessity policies (rule 7): ``policies import`` and
``policies list``. Parsing and printing only.

``policies list --json`` prints one JSON array of ``{"payer_id", "cpt", "covered_icd10"}``
objects, the shape a file is imported in, so a listing can be edited and imported again.
"""

from __future__ import annotations

import json
from pathlib import Path

from gateway.shapes import policy_json
from gateway.cli.text import plural
from gateway.cli.worklist import _read


def register(verbs, common) -> None:
    policies = verbs.add_parser("policies", parents=[common],
                                help="import or list medical necessity policies (diagnoses that justify CPT codes)")
    sub = policies.add_subparsers(dest="policies_verb", metavar="ACTION", required=True)
    imp = sub.add_parser("import", parents=[common],
                         help="replace the policies of each payer in FILE (JSON array, NDJSON or CSV); all or nothing")
    imp.add_argument("file", type=Path)
    imp.add_argument("--user", default="import", help="who imports (for the audit log)")
    imp.set_defaults(run=import_policies)
    listing = sub.add_parser("list", parents=[common], help="every policy on file, by payer")
    listing.add_argument("--json", action="store_true", help="a JSON array in the import shape")
    listing.set_defaults(run=list_policies)


def import_policies(app, args) -> int:
    count, result = app.gate.import_policies_text(_read(args.file), str(args.file), user=args.user)
    print(f"{args.file}: {plural(count, 'policy')} imported, replacing "
          f"{plural(result.updated, 'earlier policy', 'earlier policies')} of the same payers.")
    return 0


def list_policies(app, args) -> int:
    policies = app.gate.necessity_policies()
    if args.json:
        print(json.dumps([policy_json(p) for p in policies], indent=2))
        return 0
    if not policies:
        print("No necessity policies on file: no order is checked for its diagnoses. "
              "Import some with 'gatekeeper policies import FILE'.")
        return 0
    payers = len({p.payer_id for p in policies})
    print(f"{plural(len(policies), 'policy', 'policies')} of {plural(payers, 'payer')}:")
    for p in policies:
        print(f"  {p.payer_id:<16} CPT {', '.join(p.cpt)}: covered by {', '.join(p.covered_icd10)}")
    return 0
