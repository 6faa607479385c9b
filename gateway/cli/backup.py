"""Command-line verbs: ``gatekeeper backup DEST`` and ``gatekeeper restore SRC``. Parsing and printing only.

The work is in :mod:`infra.backup`. ``backup`` may run while the server runs; ``restore``
fills a gateway that is empty and stopped. ``restore`` declares ``needs_app=False``: it
must not open (and so create) the database it is about to replace. When run with an app
anyway (a ``main`` that opens the app for every verb), it closes the app's database first
and reopens nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.cli.text import plural
from infra import backup as backups
from infra.db import redacted


def register(verbs, common) -> None:
    """Add the verbs."""
    save = verbs.add_parser(
        "backup", parents=[common],
        help="copy the database and the studies (archive/, held/, rejected/) into a new or empty folder, "
             "with a manifest of checksums; safe while the server runs")
    save.add_argument("dest", metavar="DEST", type=Path, help="a new or empty folder")
    save.set_defaults(run=run_backup)
    back = verbs.add_parser(
        "restore", parents=[common],
        help="fill this empty, stopped gateway from a backup folder (every checksum is verified first)")
    back.add_argument("src", metavar="SRC", type=Path, help="a folder written by 'gatekeeper backup'")
    back.set_defaults(run=run_restore, needs_app=False)


def _mib(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


def run_backup(app, args) -> int:
    s = app.settings
    manifest = backups.backup(s.database_url, s.storage_root, args.dest, app.now())
    print(f"Backup written to {args.dest}: the {manifest.database_kind} database ({_mib(manifest.database.size)}) "
          f"and {plural(len(manifest.files), 'file')} of archive/, held/ and rejected/ "
          f"({_mib(manifest.files_bytes)}); {backups.MANIFEST} lists them with their SHA-256.")
    if backups.on_same_disk(args.dest, s.storage_root):
        print(f"Note: {args.dest} is on the same file system as the storage root; copy it to another disk "
              f"(or machine) for it to survive a disk failure.")
    if manifest.missing:
        print(f"gatekeeper: {plural(len(manifest.missing), 'file')} indexed by the database copy "
              f"{'was' if len(manifest.missing) == 1 else 'were'} gone before it could be copied (purged or "
              f"removed meanwhile); listed under \"missing\" in {backups.MANIFEST}: "
              f"{', '.join(manifest.missing[:3])}{' ...' if len(manifest.missing) > 3 else ''}", file=sys.stderr)
    if manifest.changed:
        print(f"gatekeeper: {plural(len(manifest.changed), 'file')} changed after the database copy (received "
              f"again or corrected meanwhile) and {'was' if len(manifest.changed) == 1 else 'were'} copied as "
              f"{'it is' if len(manifest.changed) == 1 else 'they are'} now; listed under \"changed\" in "
              f"{backups.MANIFEST}.", file=sys.stderr)
    return 0


def run_restore(app, args) -> int:
    if app is None:
        s = args.settings
    else:
        s = app.settings
        app.close()  # the restore replaces the database this process opened; nothing is reopened
    manifest = backups.restore(args.src, s.database_url, s.storage_root)
    print(f"Restored {args.src} (made {manifest.created_at:%Y-%m-%d %H:%M:%S} by gatekeeper "
          f"{manifest.gatekeeper_version or 'unknown'}): the {manifest.database_kind} database into "
          f"{redacted(s.database_url)} and {plural(len(manifest.files), 'file')} "
          f"({_mib(manifest.files_bytes)}) into {s.storage_root}. Every checksum was verified.")
    if manifest.missing:
        print(f"gatekeeper: the backup lacks {plural(len(manifest.missing), 'file')} its database indexes (gone "
              f"while it was made; \"missing\" in {backups.MANIFEST}).", file=sys.stderr)
    return 0
