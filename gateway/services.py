"""The list of DICOM services the server carries, and the job scheduler hook.

Each service module provides ``add_to(ae, app) -> handlers`` and ``on_start(app)``.
"""

from __future__ import annotations

ALL: list = []


def start_jobs(app):
    """Start the scheduled jobs (returns the scheduler, or None when disabled)."""
    return None
