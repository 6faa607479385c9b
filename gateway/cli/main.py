"""The ``gatekeeper`` command: argv is parsed here; each capability's module adds its verbs and prints.

Exit codes: 0 done; 1 refused (unknown order or study, wrong state, the server could not
start; nothing changed); 2 bad input (command line, settings, a rejected file). Errors of
the core (:mod:`infra.errors`) become an exit code here and nowhere else.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys

from gateway import logs
from gateway.app import open_app
from gateway.cli import audit as audit_verbs
from gateway.cli import hl7 as hl7_verbs
from gateway.cli import forward as forward_verbs
from gateway.cli import ops as ops_verbs
from gateway.cli import policies as policies_verbs
from gateway.cli import store as store_verbs
from gateway.cli import users as users_verbs
from gateway.cli import workflow as workflow_verbs
from gateway.cli import worklist as worklist_verbs
from gateway.settings import SettingsError, config_path, load
from infra.clock import clock_from_env
from infra.db import redacted
from infra.errors import GatekeeperError, InvalidInput

EXIT_OK, EXIT_REFUSED, EXIT_BAD_INPUT = 0, 1, 2


def exit_code(exc: GatekeeperError) -> int:
    """The exit code of an error of the core: 2 for bad input, 1 for any other refusal."""
    return EXIT_BAD_INPUT if isinstance(exc, InvalidInput) else EXIT_REFUSED


def iso_date(text: str) -> dt.date:
    """A YYYY-MM-DD argument; argparse turns the error into a usage message (exit 2)."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; write YYYY-MM-DD") from None


def config_option() -> argparse.ArgumentParser:
    """``--config FILE``, accepted before the command or after it (``gatekeeper held list --config F``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="settings file (default: $GATEKEEPER_CONFIG or ./settings.toml)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    common = config_option()
    parser = argparse.ArgumentParser(
        prog="gatekeeper", parents=[common],
        description="Imaging gatekeeper: a worklist that serves only authorized orders, "
        "and a store that holds studies that do not match their order.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    serve = verbs.add_parser("serve", parents=[common],
                             help="run the DICOM server (worklist, store, MPPS, commitment, jobs)")
    serve.set_defaults(run=_serve)
    worklist_verbs.register(verbs, common)
    policies_verbs.register(verbs, common)
    store_verbs.register(verbs, common)
    workflow_verbs.register(verbs, common)
    ops_verbs.register(verbs, common)
    users_verbs.register(verbs, common)
    audit_verbs.register(verbs, common)
    hl7_verbs.register(verbs, common)
    forward_verbs.register(verbs, common)
    return parser


def _serve(app, args) -> int:
    from gateway.dicom.server import serve

    return serve(app)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load(config_path(getattr(args, "config", None)))
    except SettingsError as exc:
        print(f"gatekeeper: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        clock = clock_from_env()
    except InvalidInput as exc:
        print(f"gatekeeper: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:  # serve: log.file and log.format; every other command: text on standard error
        logs.configure(settings, service=args.verb == "serve")
    except OSError as exc:
        print(f"gatekeeper: cannot open the log file {settings.log_file}: {exc.strerror or exc}. "
              f"Check log.file in {settings.source}.", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.verb != "serve":
        logging.getLogger("infra.db").setLevel(logging.WARNING)
        logging.getLogger("infra.schema").setLevel(logging.WARNING)
    if not getattr(args, "needs_app", True):  # the verb opens what it needs itself (gatekeeper check)
        args.settings = settings
        try:
            return args.run(None, args)
        except GatekeeperError as exc:
            return _refused(exc)
    try:
        app = open_app(settings, clock)
    except GatekeeperError as exc:  # a busy database, a schema newer than this program: the message says it
        return _refused(exc)
    except Exception as exc:  # database unreachable, store not writable
        print(f"gatekeeper: cannot open the database {redacted(settings.database_url)} or the storage root "
              f"{settings.storage_root}: {exc}. Check database.url and storage.root in {settings.source}.",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return args.run(app, args)
    except GatekeeperError as exc:
        return _refused(exc)
    finally:
        app.close()


def _refused(exc: GatekeeperError) -> int:
    """Say what the core refused, in its own sentence, and return the exit code."""
    print(f"gatekeeper: {exc}", file=sys.stderr)
    return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
