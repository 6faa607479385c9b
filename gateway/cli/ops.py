"""Command-line verbs for running the gatekeeper as a service: check, backup, restore."""

from __future__ import annotations


def register(verbs, common) -> None:
    """Add the operations verbs (filled in by the modules that implement them)."""
