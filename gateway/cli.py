"""The ``gatekeeper`` command: one module parses argv, each capability adds its verbs.

Exit codes: 0 done; 1 refused (unknown order or study, wrong state, nothing to do);
2 bad input (command line, settings, or a rejected file).
"""

from __future__ import annotations

import argparse
import logging
import sys

from gateway import cli_store, cli_worklist, cli_workflow
from gateway.app import open_app
from gateway.errors import BadInput, Refused
from gateway.settings import SettingsError, config_path, load

EXIT_OK, EXIT_REFUSED, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatekeeper",
        description="Imaging gatekeeper: a worklist that serves only authorized orders, "
        "and a store that holds studies that do not match their order.",
    )
    parser.add_argument("--config", metavar="FILE", help="settings file (default: $GATEKEEPER_CONFIG or ./settings.toml)")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    serve = verbs.add_parser("serve", help="run the DICOM server (worklist, store, MPPS, commitment, jobs)")
    serve.set_defaults(run=_serve)
    cli_worklist.register(verbs)
    cli_store.register(verbs)
    cli_workflow.register(verbs)
    return parser


def _serve(app, args) -> int:
    from gateway.server import serve

    return serve(app)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load(config_path(args.config))
    except SettingsError as exc:
        print(f"gatekeeper: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.verb != "serve":
        logging.getLogger("worklist.db").setLevel(logging.WARNING)
    try:
        app = open_app(settings)
    except Exception as exc:  # database unreachable, store not writable
        print(f"gatekeeper: cannot open {settings.database_url} or {settings.storage_root}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return args.run(app, args)
    except Refused as exc:
        print(f"gatekeeper: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except BadInput as exc:
        print(f"gatekeeper: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        app.db.close()


if __name__ == "__main__":
    sys.exit(main())
