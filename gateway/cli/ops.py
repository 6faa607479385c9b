"""Command-line verbs for running the gatekeeper as a service: check, backup, restore."""

from __future__ import annotations

from gateway.cli import backup, check


def register(verbs, common) -> None:
    check.register(verbs, common)
    backup.register(verbs, common)
