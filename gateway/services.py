"""The DICOM services the server carries, and the job scheduler hook.

Each service module provides ``add_to(ae, app) -> handlers`` (adds its presentation
contexts, returns its event handlers bound to the app) and ``on_start(app)``.
"""

from __future__ import annotations

from gateway import commit_scp, jobs, mpps_scp, mwl_scp, store_scp

ALL = [mwl_scp, store_scp, mpps_scp, commit_scp]


def start_jobs(app):
    """Start the scheduled jobs (returns the scheduler, or None when disabled)."""
    if not app.settings.jobs_enabled:
        return None
    return jobs.start(app)
