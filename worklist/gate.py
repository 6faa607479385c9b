"""The worklist gate's use cases (rule 1 of docs/rules.md): every front end goes through here.

:class:`Gate` is given its collaborators (the database, the payer policy, the clock)
and offers what people and jobs do with orders and auths: import them, look at a day,
explain one order, override, re-evaluate, warn of expiring auths, and the one
authorization decision the store asks for (:meth:`Gate.authorization`). Rules live in
:mod:`worklist.gating` and :mod:`worklist.watch`; rows in :mod:`worklist.records`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import peewee as pw

from infra import audit
from infra.clock import Clock
from infra.errors import InvalidInput, NotFound
from worklist import records, watch
from worklist.gating import Authorization, Decision, Reason, auth_date, auth_problems, authorize
from worklist.intake import parse_auths, parse_orders, parse_policies
from worklist.necessity import NecessityPolicy, applicable
from worklist.orders import REPORT_STATUSES, Auth, Order
from worklist.policy import PayerPolicy
from worklist.records import ImportResult

log = logging.getLogger("worklist.gate")

#: Orders re-evaluated per batch (one transaction each).
REEVALUATE_CHUNK = 2000
#: The audit log's ``user`` of the jobs' events.
REEVALUATE_USER = "job:reevaluate"
EXPIRING_USER = "job:expiring_auths"


@dataclass(frozen=True)
class Entry:
    """One order and the gate's decision for it today."""

    order: Order
    decision: Decision


@dataclass(frozen=True)
class AuthOnFile:
    """An auth of the order's patient and what it fails for the order ("OTHER_PAYER" for another payer's)."""

    auth: Auth
    problems: tuple[Reason, ...]
    other_payer: bool = False


@dataclass(frozen=True)
class Explanation:
    """Why an order is served or withheld (``gatekeeper worklist why``)."""

    order: Order
    decision: Decision
    needs_auth: bool
    as_of: dt.date
    auths_on_file: tuple[AuthOnFile, ...]
    #: The necessity policies that apply to the order (rule 7); empty: no diagnosis check.
    necessity: tuple[NecessityPolicy, ...] = ()


@dataclass(frozen=True)
class Reevaluation:
    """What a re-evaluation found: the counts by kind of change (:mod:`worklist.watch`)."""

    as_of: dt.date
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ExpiryWarnings:
    """What the expiring-auth check found and warned of."""

    start: dt.date
    end: dt.date
    due: int
    risks: tuple[watch.AuthRisk, ...]
    warned: tuple[watch.AuthRisk, ...]


class Gate:
    """Orders, auths and the rule-1 decision, over one database."""

    def __init__(self, db: pw.Database, policy: PayerPolicy, clock: Clock, *, expiring_auth_days: int = 7) -> None:
        self.db = db
        self.policy = policy
        self.clock = clock
        self.expiring_auth_days = expiring_auth_days

    # -- intake ---------------------------------------------------------------------------

    def import_orders(self, orders: Sequence[Order], *, user: str = "import", source: str = "") -> ImportResult:
        """Upsert checked orders by accession number, all or nothing (audited)."""
        return records.upsert_orders(self.db, orders, self.clock(), user=user, source=source)

    def import_auths(self, auths: Sequence[Auth], *, user: str = "import", source: str = "") -> ImportResult:
        """Upsert checked auths by auth number, all or nothing (audited)."""
        return records.upsert_auths(self.db, auths, self.clock(), user=user, source=source)

    def import_orders_text(self, text: str, source: str, *, user: str = "import") -> tuple[int, ImportResult]:
        """Parse a whole order file (:class:`~worklist.intake.IntakeError` names every problem), then import it."""
        orders = parse_orders(text, source)
        return len(orders), self.import_orders(orders, user=user, source=source)

    def import_auths_text(self, text: str, source: str, *, user: str = "import") -> tuple[int, ImportResult]:
        """Parse a whole auth file (JSON, NDJSON or CSV), then import it."""
        auths = parse_auths(text, source)
        return len(auths), self.import_auths(auths, user=user, source=source)

    def import_policies_text(self, text: str, source: str, *, user: str = "import") -> tuple[int, ImportResult]:
        """Parse a whole necessity policy file (JSON, NDJSON or CSV), then make its policies the
        whole set of each payer it names (``updated`` counts the earlier policies replaced); audited."""
        policies = parse_policies(text, source)
        return len(policies), records.replace_necessity(self.db, policies, self.clock(), user=user, source=source)

    def necessity_policies(self) -> list[NecessityPolicy]:
        """Every necessity policy on file, by payer."""
        return records.necessity_policies()

    # -- reading ---------------------------------------------------------------------------

    def order(self, accession: str) -> Order:
        """The order with this accession number, or :class:`NotFound`."""
        found = records.order(accession)
        if found is None:
            raise NotFound(f"no order with accession number {accession!r}; check the number or import the order first")
        return found

    def find_order(self, accession: str) -> Order | None:
        """The order with this accession number, or None."""
        return records.order(accession)

    def orders(self, accessions) -> dict[str, Order]:
        """The orders with these accession numbers, keyed by accession number."""
        return records.orders_by_accession(accessions)

    def same_procedure_accessions(self, order: Order) -> dict[str, Order]:
        """The patient's other orders for the same CPT code, keyed by accession number (rule 7,
        POSSIBLE_DUPLICATE_ORDER); by the indexed patient ID."""
        return records.same_procedure_orders(order)
    def auths_current(self, limit: int = 500) -> list[Auth]:
        """Auths valid today or later, soonest end first."""
        return records.auths_valid_on_or_after(self.clock().date(), limit)

    def search_orders(self, text: str, limit: int = 50) -> list[Order]:
        """Orders by accession number, patient ID, or a part of the patient's name (``DOE^JA``, ``doe ja``)."""
        text = text.strip()
        if not text:
            raise InvalidInput("say what to search for: an accession number, a patient ID or part of a name")
        return records.search_orders(text, limit)

    def orders_since(self, start: dt.datetime) -> list[Order]:
        """Orders scheduled from ``start`` on (the report's period)."""
        return records.orders_since(start)

    def override_accessions_since(self, start: dt.datetime) -> list[str]:
        """One accession number per override recorded from ``start`` on."""
        return records.override_accessions_since(start)

    def accessions_with_steps(self, accessions) -> set[str]:
        """Which of these accession numbers any MPPS step has named."""
        return records.accessions_with_steps(accessions)

    def performed_without_final_report(self, since: dt.datetime) -> list[Order]:
        """Completed orders scheduled from ``since`` on whose report is not final."""
        return records.performed_without_final_report(since)

    def report_statuses_since(self, start: dt.datetime) -> dict[str, int]:
        """Orders scheduled from ``start`` on, counted by report status ("" for none yet)."""
        return records.report_statuses_since(start)

    def open_orders_scheduled(self, start: dt.datetime, end: dt.datetime) -> list[Order]:
        """Open orders scheduled in [start, end)."""
        return records.orders_scheduled(start, end, open_only=True)

    def completed_steps_since(self, start: dt.datetime) -> int:
        """MPPS steps completed from ``start`` on."""
        return records.completed_steps_since(start)

    def decide(self, orders: Sequence[Order]) -> list[Decision]:
        """Rule 1 for each order as of today."""
        return records.decide_all(orders, self.policy, self.clock().date())

    def day(self, day: dt.date, station_ae: str | None = None) -> list[Entry]:
        """Every order scheduled on ``day`` (at one station), served or withheld as of today."""
        start = dt.datetime.combine(day, dt.time.min)
        orders = records.orders_scheduled(start, start + dt.timedelta(days=1), station_ae=station_ae)
        return [Entry(o, d) for o, d in zip(orders, self.decide(orders))]

    def explain(self, accession: str) -> Explanation:
        """The decision for one order and what every auth of its patient fails."""
        order = self.order(accession)
        today = self.clock().date()
        (decision,) = self.decide([order])
        on = auth_date(order, today)
        auths = records.auths_for_patients([order.patient_id]).get(order.patient_id, [])
        on_file = tuple(
            AuthOnFile(a, auth_problems(order, a, on) if a.payer_id == order.payer_id else (),
                       other_payer=a.payer_id != order.payer_id)
            for a in sorted(auths, key=lambda a: a.auth_number)
        )
        necessity = applicable(order, records.necessity_for_payers([order.payer_id]).get(order.payer_id, ()))
        return Explanation(order, decision, self.policy.requires_auth(order.payer_id, order.cpt), today, on_file,
                           necessity)

    # -- acting ----------------------------------------------------------------------------

    def override(self, accession: str, *, user: str, reason: str) -> Entry:
        """Serve a withheld order without an auth (audited); the decision afterwards."""
        if not user.strip() or not reason.strip():
            raise InvalidInput("an override needs --user and --reason: who decided, and why the exam cannot wait")
        if records.add_override(self.db, accession, user, reason, self.clock()) is None:
            raise NotFound(f"no order with accession number {accession!r}; check the number or import the order first")
        order = self.order(accession)
        return Entry(order, self.decide([order])[0])

    # -- the store's question ----------------------------------------------------------------

    def authorization(self, accession: str, on: dt.date) -> tuple[Order | None, Authorization | None]:
        """The order with ``accession`` and whether it may be performed on day ``on``.

        The same function the worklist serves by (:func:`worklist.gating.authorize`), so
        the store's ``ORDER_NOT_AUTHORIZED`` and the worklist never disagree. (None, None)
        when no order has that accession number.
        """
        order = records.order(accession)
        if order is None:
            return None, None
        auths = records.auths_for_patients([order.patient_id]).get(order.patient_id, ())
        override = records.overrides_for([accession]).get(accession)
        return order, authorize(order, auths, self.policy, on, override)

    # -- the jobs ----------------------------------------------------------------------------

    def reevaluate(self, chunk_size: int = REEVALUATE_CHUNK) -> Reevaluation:
        """Rule 1 over the open orders scheduled from yesterday on and every order with a recorded state.

        Orders are read by id in chunks; each chunk is decided with one batched load of
        auths and overrides, and its outcome written in one transaction. A flip between
        served and withheld is audited (``worklist.served`` / ``worklist.withheld``), written
        with a compare-and-set so that two gateways sharing a database audit it once.
        """
        now = self.clock()
        today = now.date()
        since = dt.datetime.combine(today - dt.timedelta(days=1), dt.time.min)
        counts: Counter[str] = Counter()
        last_id = 0
        while True:
            chunk = records.orders_to_reevaluate(since, last_id, chunk_size)
            if not chunk:
                break
            last_id = chunk[-1].id
            before = {r.order.accession_number: watch.GateState.recorded(r.last_decision, r.last_reasons) for r in chunk}
            changes = watch.compare(before, self.decide([r.order for r in chunk]))
            ids = {r.order.accession_number: r.id for r in chunk}
            with self.db.atomic():
                self._record_changes(changes, ids, now, counts)
            counts["evaluated"] += len(chunk)
        keys = ("evaluated", watch.WITHHELD_NOW, watch.SERVED_NOW, watch.FIRST_SEEN, watch.CODES_CHANGED, watch.RETIRED)
        return Reevaluation(today, {k: counts[k] for k in keys})

    def regate(self, accessions, *, user: str) -> dict[str, int]:
        """Rule 1 for these orders now, after a change to them (a patient update or merge from
        the RIS feed): a flip between served and withheld is recorded and audited as the
        re-evaluation does, under ``user``. Runs in the caller's transaction when there is one."""
        chunk = records.recorded_orders(accessions)
        before = {r.order.accession_number: watch.GateState.recorded(r.last_decision, r.last_reasons) for r in chunk}
        changes = watch.compare(before, self.decide([r.order for r in chunk]))
        counts: Counter[str] = Counter()
        with self.db.atomic():
            self._record_changes(changes, {r.order.accession_number: r.id for r in chunk}, self.clock(), counts,
                                 user=user)
        return dict(counts)

    def set_report_status(self, accession: str, status: str, *, at: dt.datetime | None, radiologist: str = "",
                          user: str, source: str = "") -> Order:
        """Record the RIS's report status of an order (audited as ``order.report_status``)."""
        if status not in REPORT_STATUSES:
            raise InvalidInput(f"{status!r} is not a report status; use one of "
                               f"{', '.join(repr(s) for s in REPORT_STATUSES if s)}")
        now = self.clock()
        with self.db.atomic():
            before = records.order(accession)
            if before is None or not records.set_report_status(accession, status, at, now):
                raise NotFound(f"no order with accession number {accession!r}; check the number or send the "
                               "order first")
            audit.record(now, user, "order.report_status", accession, source, before=before.report_status,
                         after=status, reached_at=at.isoformat() if at else None, radiologist=radiologist)
        log.info("order %s report status %s", accession, status or "none")
        return self.order(accession)

    def _record_changes(self, changes: list[watch.Change], ids: dict[str, int], now: dt.datetime,
                        counts: Counter, *, user: str = REEVALUATE_USER) -> None:
        quiet: dict[tuple, list[int]] = defaultdict(list)
        for change in changes:
            columns = change.columns
            if columns is None:
                continue
            if not change.audited:
                quiet[columns].append(ids[change.accession_number])
                counts[change.kind] += 1
                continue
            if not records.record_state(ids[change.accession_number], *columns, if_was=change.before.outcome):
                continue  # another gateway recorded this flip first
            counts[change.kind] += 1
            d = change.decision
            action = watch.AUDIT_SERVED if change.kind == watch.SERVED_NOW else watch.AUDIT_WITHHELD
            audit.record(now, user, action, change.accession_number, watch.change_reason(change),
                         before=change.before.outcome, before_codes=list(change.before.codes),
                         after=change.after.outcome, codes=list(d.codes), basis=d.basis, auth_number=d.auth_number)
            why = (f"{d.basis}, auth {d.auth_number}" if d.auth_number else d.basis) if d.served else " ".join(d.codes)
            log.info("order %s is now %s (%s)", change.accession_number, change.after.outcome, why)
        for (last_decision, last_reasons), row_ids in quiet.items():
            records.record_states(row_ids, last_decision, last_reasons)

    def warn_expiring_auths(self) -> ExpiryWarnings:
        """Warn once (WARNING log and audit) of each order due soon whose auth will not cover it."""
        now = self.clock()
        today = now.date()
        start, end = watch.due_window(today, self.expiring_auth_days)
        due = records.orders_scheduled(start, end, open_only=True)
        patients = {o.patient_id for o in due}
        open_orders = records.open_orders_of(patients)
        auths = records.auths_for_patients(patients)
        overrides = records.overrides_for(o.accession_number for o in open_orders)
        risks = watch.auth_risks(due, open_orders, auths, overrides, self.policy, today)
        warned = {(subject, info.get("auth_number", ""), info.get("code", ""))
                  for subject, info in audit.details(watch.RISK_ACTIONS.values(), (r.accession_number for r in risks))}
        fresh = watch.new_risks(risks, warned)
        with self.db.atomic():
            for risk in fresh:
                log.warning("order %s on %s: %s", risk.accession_number, risk.scheduled_date, risk.text)
                audit.record(now, EXPIRING_USER, watch.RISK_ACTIONS[risk.code], risk.accession_number, risk.text,
                             auth_number=risk.auth_number, code=risk.code, scheduled_date=risk.scheduled_date.isoformat())
        return ExpiryWarnings(start.date(), (end - dt.timedelta(days=1)).date(), len(due), tuple(risks), tuple(fresh))
