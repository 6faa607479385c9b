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
from infra import audit, audit_outbox, schema, users
from infra.clock import Clock, clock_from_env
from infra.db import Database, bind, open_database
from store import models as store_models
from store.followup import Followup
from store.qr import QueryRetrieve
from store.reconcile import hold_codes_from_warn_codes
from store.store import Store, StoreConfig
from worklist import models as worklist_models
from worklist.gate import Gate
from worklist.query import WorklistQuery
from worklist.steps import Steps

#: Every table of the product.
MODELS = [*worklist_models.MODELS, *store_models.MODELS, *audit.MODELS, *audit_outbox.MODELS, *users.MODELS]


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
    followup: Followup = field(init=False)
    users: users.Users = field(init=False)
    qr: QueryRetrieve = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.gate = Gate(self.db, s.policy, self.clock, expiring_auth_days=s.expiring_auth_days)
        self.query = WorklistQuery(s.policy, self.clock, auth_attribute=s.auth_attribute,
                                   restrict_unnamed_station_to_caller=s.restrict_unnamed_station_to_caller)
        self.steps = Steps(self.db, s.policy, self.clock, any_station_aets=s.any_station_aets)
        self.store = Store(self.db, StoreConfig(
            root=s.storage_root, ae_title=s.ae_title, hold_codes=hold_codes_from_warn_codes(s.warn_codes),
            rejected_retention_days=s.rejected_retention_days, held_alert_hours=s.held_alert_hours,
            min_free_mb=s.min_free_mb, destinations=s.destinations,
            forwarded_retention_days=s.forwarded_retention_days,
        ), self.gate, self.clock)
        self.followup = Followup(self.db, self.store.index, self.gate, self.steps, self.clock,
                                 filing_alert_days=s.filing_alert_days,
                                 complete_without_mpps_minutes=s.complete_without_mpps_minutes)
        self.users = users.Users(self.db, self.clock)
        self.qr = QueryRetrieve(self.store.index, self.store.root, ae_title=s.ae_title,
                                include_held=s.qr_include_held, held_viewers=s.qr_held_viewers)

    def now(self) -> dt.datetime:
        return self.clock()

    def today(self) -> dt.date:
        return self.clock().date()

    def close(self) -> None:
        self.store.close()
        self.db.close()

    # -- reload (SIGHUP) ------------------------------------------------------------

    #: What a running app takes from new settings without a restart: (settings.toml key,
    #: Settings field, how to apply it). Adding one is one line here; every other setting
    #: needs a restart. Each apply is a plain attribute assignment, so a query or a store
    #: in flight finishes with the value it started with and the next one uses the new one.
    RELOADABLE = (
        ("payers", "policy", lambda app, s: app._apply_policy(s.policy)),
        ("reconcile.warn_codes", "warn_codes", lambda app, s: app._apply_warn_codes(s.warn_codes)),
        ("qr.include_held", "qr_include_held", lambda app, s: setattr(app.qr, "include_held", s.qr_include_held)),
        ("qr.held_viewers", "qr_held_viewers", lambda app, s: setattr(app.qr, "held_viewers", s.qr_held_viewers)),
    )

    def reload(self, new_settings: Settings) -> list[str]:
        """Apply the reloadable settings of ``new_settings`` that differ; return their keys.

        Settings that need a restart are not applied (see :meth:`needs_restart`); the
        running ``self.settings`` keeps their values, so the next reload names them again.
        """
        import dataclasses

        applied, changes = [], {}
        for key, name, apply in self.RELOADABLE:
            value = getattr(new_settings, name)
            if getattr(self.settings, name) != value:
                apply(self, new_settings)
                applied.append(key)
                changes[name] = value
        if changes:
            self.settings = dataclasses.replace(self.settings, **changes)
        return applied

    def needs_restart(self, new_settings: Settings) -> list[str]:
        """The settings.toml keys that differ in ``new_settings`` and only a restart applies."""
        import dataclasses

        reloadable = {name for _, name, _ in self.RELOADABLE} | {"source"}
        return [self.setting_key(f.name) for f in dataclasses.fields(Settings)
                if f.name not in reloadable and getattr(self.settings, f.name) != getattr(new_settings, f.name)]

    @staticmethod
    def setting_key(name: str) -> str:
        """The settings.toml key of a :class:`Settings` field (``port`` -> ``server.port``)."""
        from gateway.settings import DECLARED

        keys = [d.key for d in DECLARED]
        for key in keys:  # "metrics_port" is metrics.port, before "port" is tried as a bare name
            if name == key.replace(".", "_"):
                return key
        for key in keys:
            if name == key.split(".", 1)[1]:
                return key
        return {"policy": "payers", "audit_syslog": "audit.syslog", "hl7_stations": "hl7.stations",
                "destinations": "forward"}.get(name, name)

    def _apply_policy(self, policy) -> None:
        # The query's caches hold items per order and auth number, never per policy: a
        # policy change decides afresh which orders are served and reuses those items.
        self.gate.policy = self.query.policy = self.steps.policy = policy

    def _apply_warn_codes(self, warn_codes: frozenset[str]) -> None:
        import dataclasses

        hold_codes = hold_codes_from_warn_codes(warn_codes)
        self.store.receiving.hold_codes = hold_codes
        self.store.config = dataclasses.replace(self.store.config, hold_codes=hold_codes)


def open_database_of(settings: Settings) -> Database:
    """Open the database named in settings, with every model bound to it, at this program's
    schema version: an empty one is created, an older one upgraded in place
    (:func:`infra.schema.upgrade`); a newer one raises :class:`infra.schema.SchemaTooNew`."""
    db = open_database(settings.database_url)
    bind(db, MODELS)
    db.connect(reuse_if_open=True)
    try:
        schema.upgrade(db, MODELS)
        audit.protect(db)
    except BaseException:
        db.close()
        raise
    return db


def open_app(settings: Settings, clock: Clock | None = None) -> App:
    """The app of these settings: database opened and migrated, storage root ready."""
    clock = clock or clock_from_env()
    settings.storage_root.mkdir(parents=True, exist_ok=True)
    return App(settings=settings, db=open_database_of(settings), clock=clock)
