"""Command-line verb: ``gatekeeper check [--json]``, the preflight. Parsing and printing only.

The checks are in :mod:`gateway.preflight`. One line per check (``ok``, ``FAIL`` with why
and what to do, ``skip`` with why), then a summary; exit 0 when none failed, 1 otherwise.
``--json`` prints ``{"ok": bool, "checks": [{"name", "status", "detail"}]}`` (README.md).

The verb declares ``needs_app=False``: it opens the database itself, as one of its checks,
so that it can report a database that cannot be opened. When run with an app anyway (a
``main`` that opens the app for every verb), the database check is the app's opening.
"""

from __future__ import annotations

import json

from gateway import preflight
from gateway.cli.text import plural

EXIT_OK, EXIT_FAILED = 0, 1
_LABEL = {preflight.OK: "ok", preflight.FAIL: "FAIL", preflight.SKIP: "skip"}


def register(verbs, common) -> None:
    """Add the verb."""
    check = verbs.add_parser(
        "check", parents=[common],
        help="preflight: database, storage folders and free space, ports, TLS files, peers (exit 1 when any fails)")
    check.add_argument("--json", action="store_true", help="machine-readable output (see README)")
    check.set_defaults(run=run_check, needs_app=False)


def run_check(app, args) -> int:
    settings = app.settings if app is not None else args.settings
    checks = preflight.run_all(settings, database_opened=app is not None)
    ok = not any(c.status == preflight.FAIL for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [{"name": c.name, "status": c.status, "detail": c.detail}
                                                for c in checks]}, indent=2))
    else:
        for c in checks:
            print(f"{_LABEL[c.status]:<5} {c.name}" + (f": {c.detail}" if c.detail else ""))
        print(summary(checks, settings.source))
    return EXIT_OK if ok else EXIT_FAILED


def summary(checks: list[preflight.Check], source) -> str:
    failed = [c for c in checks if c.status == preflight.FAIL]
    skipped = sum(c.status == preflight.SKIP for c in checks)
    skips = f", {skipped} skipped" if skipped else ""
    if failed:
        return (f"{len(failed)} of {plural(len(checks), 'check')} failed{skips}: "
                f"{'; '.join(c.name for c in failed)}. Fix them (see {source}) and run 'gatekeeper check' again.")
    return f"All {plural(len(checks), 'check')} passed{skips}: ready to 'gatekeeper serve'."
