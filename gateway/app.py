"""Wiring: open the database and store for a settings file, and hand out the clock.

One :class:`App` is built per process (CLI command or server) from the frozen
settings, and passed to whatever needs it; nothing reads settings from globals.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from typing import Callable

import peewee

from gateway.settings import Settings
from store import models as store_models
from worklist import models as worklist_models
from worklist.db import migrate, open_database

#: A fixed local time (YYYY-MM-DDTHH:MM:SS) for drills and tests: the gateway then
#: decides the worklist as of that moment instead of the wall clock.
NOW_ENV = "GATEKEEPER_NOW"

log = logging.getLogger(__name__)


def wall_clock() -> dt.datetime:
    """Local time without an offset, as the RIS schedules."""
    return dt.datetime.now().replace(microsecond=0)


def clock_from_env(environ=None) -> Callable[[], dt.datetime]:
    environ = os.environ if environ is None else environ
    fixed = environ.get(NOW_ENV)
    if not fixed:
        return wall_clock
    try:
        moment = dt.datetime.fromisoformat(fixed)
    except ValueError:
        raise ValueError(f"{NOW_ENV}={fixed!r} is not a local date-time; write YYYY-MM-DDTHH:MM:SS") from None
    return lambda: moment


@dataclass
class App:
    settings: Settings
    db: peewee.Database
    clock: Callable[[], dt.datetime] = wall_clock

    def now(self) -> dt.datetime:
        return self.clock()

    def today(self) -> dt.date:
        return self.clock().date()


def open_app(settings: Settings, clock: Callable[[], dt.datetime] | None = None) -> App:
    """Open (and bring up to date) the database named in settings."""
    db = open_database(settings.database_url)
    db.connect(reuse_if_open=True)
    migrate(db, worklist_models.MODELS + store_models.MODELS)
    worklist_models.protect_audit_log(db)
    settings.storage_root.mkdir(parents=True, exist_ok=True)
    return App(settings=settings, db=db, clock=clock or clock_from_env())
