"""Command-line verb: backup (to be written)."""

from __future__ import annotations


def register(verbs, common) -> None:
    """Add the verb."""
