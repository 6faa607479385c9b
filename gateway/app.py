"""The composition root: open the database and build the core's use cases from the settings.

One :class:`App` is built per process (a CLI command or the server) from the frozen
settings, and handed to the front ends; nothing reads settings or the database from
globals. Each capability gets only what it needs: the worklist gate, the worklist query
and the MPPS steps get the database, the payer policy and the clock; the store gets the
database, its own settings, the gate (for authorizations) and the clock.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from gateway.settings import Settings
from infra import audit
from infra.clock import Clock, clock_from_env
from infra.db import Database, bind, migrate, open_database
from store import models as store_models
from store.reconcile import hold_codes_from_warn_codes
from store.store import Store, StoreConfig
from worklist import models as worklist_models
from worklist.gate import Gate
from worklist.query import WorklistQuery
from worklist.steps import Steps

#: Every table of the product.
MODELS = [*worklist_models.MODELS, *store_models.MODELS, *audit.MODELS]


@dataclass
class App:
    """The settings, the database, the clock, and the core's use cases built on them."""

    settings: Settings
    db: Database
    clock: Clock
    gate: Gate = field(init=False)
    query: WorklistQuery = field(init=False)
    steps: Steps = field(init=False)
    store: Store = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.gate = Gate(self.db, s.policy, self.clock, expiring_auth_days=s.expiring_auth_days)
        self.query = WorklistQuery(s.policy, self.clock, auth_attribute=s.auth_attribute,
                                   restrict_unnamed_station_to_caller=s.restrict_unnamed_station_to_caller)
        self.steps = Steps(self.db, s.policy, self.clock)
        self.store = Store(self.db, StoreConfig(
            root=s.storage_root, ae_title=s.ae_title, hold_codes=hold_codes_from_warn_codes(s.warn_codes),
            rejected_retention_days=s.rejected_retention_days, held_alert_hours=s.held_alert_hours,
            min_free_mb=s.min_free_mb,
        ), self.gate, self.clock)

    def now(self) -> dt.datetime:
        return self.clock()

    def today(self) -> dt.date:
        return self.clock().date()

    def close(self) -> None:
        self.store.close()
        self.db.close()


def open_database_of(settings: Settings) -> Database:
    """Open (and bring up to date) the database named in settings, with every model bound to it."""
    db = open_database(settings.database_url)
    bind(db, MODELS)
    db.connect(reuse_if_open=True)
    migrate(db, MODELS)
    audit.protect(db)
    return db


def open_app(settings: Settings, clock: Clock | None = None) -> App:
    """The app of these settings: database opened and migrated, storage root ready."""
    clock = clock or clock_from_env()
    settings.storage_root.mkdir(parents=True, exist_ok=True)
    return App(settings=settings, db=open_database_of(settings), clock=clock)
