"""Rule 6 (docs/rules.md), worklist side: what the scheduled jobs look for, as pure functions.

Two questions, answered over plain types with today's date passed in:

- :func:`compare`: which orders changed between served and withheld since the last
  re-evaluation (the previous state is what ``OrderRow.last_decision`` and
  ``last_reasons`` remember);
- :func:`auth_risks`: which orders due in the next few days will find their auth expired
  or its units used up by the time they are performed.

No database, no clock, no logging: :class:`worklist.gate.Gate` loads the rows and records the results.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from worklist.gating import (
    AUTH_DATE_OUT_OF_RANGE, BASIS_AUTH, ORDER_NOT_SCHEDULED, Decision, decide,
)
from worklist.orders import WORKABLE_STATUSES, Auth, Order, Override
from worklist.policy import PayerPolicy

SERVED = "served"
WITHHELD = "withheld"

# What a re-evaluation found for one order.
FIRST_SEEN = "first-seen"        # no state recorded yet: recorded, not audited
SERVED_NOW = "served-now"        # was withheld, now served: audited
WITHHELD_NOW = "withheld-now"    # was served, now withheld: audited
CODES_CHANGED = "codes-changed"  # still withheld, for other reasons: recorded, not audited
RETIRED = "retired"              # the order left the open statuses: state forgotten
UNCHANGED = "unchanged"

#: Audit actions of the re-evaluation job (subject: the accession number).
AUDIT_SERVED = "worklist.served"
AUDIT_WITHHELD = "worklist.withheld"

# Reasons of the expiring-auth warning (also the audit action's suffix).
AUTH_WILL_EXPIRE = "AUTH_WILL_EXPIRE"
AUTH_UNITS_SHORT = "AUTH_UNITS_SHORT"
#: Audit action per warning reason (subject: the accession number; detail names the auth).
RISK_ACTIONS = {AUTH_WILL_EXPIRE: "order.auth_will_expire", AUTH_UNITS_SHORT: "order.auth_units_short"}


@dataclass(frozen=True)
class GateState:
    """What the worklist did with an order at one evaluation: served or withheld, and why."""

    outcome: str  # SERVED or WITHHELD
    codes: tuple[str, ...] = ()

    @classmethod
    def of(cls, decision: Decision) -> "GateState":
        if decision.served:
            return cls(SERVED)
        return cls(WITHHELD, decision.codes)

    @classmethod
    def recorded(cls, last_decision: str | None, last_reasons: str) -> "GateState | None":
        """The state stored in ``OrderRow.last_decision`` / ``last_reasons`` (None: never evaluated)."""
        if last_decision not in (SERVED, WITHHELD):
            return None
        return cls(last_decision, tuple(last_reasons.split()) if last_decision == WITHHELD else ())

    def columns(self) -> tuple[str, str]:
        """The values of ``last_decision`` and ``last_reasons`` for this state."""
        return self.outcome, " ".join(self.codes)


@dataclass(frozen=True)
class Change:
    """The outcome of re-evaluating one order against its recorded state."""

    accession_number: str
    kind: str
    before: GateState | None
    after: GateState
    decision: Decision

    @property
    def audited(self) -> bool:
        """True for a flip between served and withheld: the audit log records it."""
        return self.kind in (SERVED_NOW, WITHHELD_NOW)

    @property
    def columns(self) -> tuple[str | None, str] | None:
        """The new ``last_decision`` / ``last_reasons``, or None when nothing is to be written."""
        if self.kind == UNCHANGED:
            return None
        if ORDER_NOT_SCHEDULED in self.after.codes:  # left the open statuses: forget it
            return None, ""
        return self.after.columns()


def compare(before: Mapping[str, GateState | None], decisions: Iterable[Decision]) -> list[Change]:
    """Each decision against the order's recorded state (keyed by accession number).

    The first evaluation of an order records its state without calling it a change:
    on the first run after an upgrade every order would otherwise be "new". An order
    that left the open statuses (completed, cancelled, discontinued) is evaluated one
    last time: if it was served its leaving is audited as withheld (ORDER_NOT_SCHEDULED),
    and its recorded state is cleared so that later runs no longer load it.
    """
    changes = []
    for d in decisions:
        old = before.get(d.accession_number)
        new = GateState.of(d)
        closed = ORDER_NOT_SCHEDULED in d.codes
        if old is None:
            kind = UNCHANGED if closed else FIRST_SEEN
        elif old.outcome != new.outcome:
            kind = SERVED_NOW if new.outcome == SERVED else WITHHELD_NOW
        elif closed:
            kind = RETIRED
        elif old.codes != new.codes:
            kind = CODES_CHANGED
        else:
            kind = UNCHANGED
        changes.append(Change(d.accession_number, kind, old, new, d))
    return changes


def change_reason(change: Change) -> str:
    """The audit reason of a flip: what the worklist does now, and why."""
    return change.decision.summary()


@dataclass(frozen=True)
class AuthRisk:
    """An order due soon that its auth will not cover when it is performed."""

    accession_number: str
    scheduled_date: dt.date
    auth_number: str
    code: str  # AUTH_WILL_EXPIRE or AUTH_UNITS_SHORT
    text: str

    @property
    def key(self) -> tuple[str, str, str]:
        """Warned once per order, auth and reason."""
        return self.accession_number, self.auth_number, self.code


def due_window(today: dt.date, days: int) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of the orders the warning looks at: today and the next ``days`` days."""
    start = dt.datetime.combine(today, dt.time.min)
    return start, start + dt.timedelta(days=days + 1)


def auth_risks(
    due: Sequence[Order],
    open_orders: Sequence[Order],
    auths: Mapping[str, Sequence[Auth]],
    overrides: Mapping[str, Override],
    policy: PayerPolicy,
    today: dt.date,
) -> list[AuthRisk]:
    """Orders in ``due`` whose auth will have expired, or run out of units, by their date.

    ``open_orders`` are every open order of the same patients (``due`` among them): they
    compete for the same units. ``auths`` is keyed by patient ID, ``overrides`` by
    accession number.

    - AUTH_WILL_EXPIRE: the order is withheld only because the date is outside the
      window of its closest auth, which ends before the scheduled day (the auth covers
      it up to then: extend it, or perform the exam before it expires).
    - AUTH_UNITS_SHORT: the order is served on an auth whose units left are fewer than
      the open orders served on it; the earliest orders take the units, and every later
      one is at risk.
    """
    by_number = {a.auth_number: a for group in auths.values() for a in group}
    decisions = {
        o.accession_number: decide(o, auths.get(o.patient_id, ()), policy, today, overrides.get(o.accession_number))
        for o in {o.accession_number: o for o in (*open_orders, *due)}.values()
        if o.status in WORKABLE_STATUSES
    }
    orders = {o.accession_number: o for o in (*open_orders, *due)}
    due_accessions = {o.accession_number for o in due}
    risks: list[AuthRisk] = []

    for order in due:
        d = decisions.get(order.accession_number)
        if d is None or d.served or d.codes != (AUTH_DATE_OUT_OF_RANGE,) or d.auth_number is None:
            continue
        auth = by_number[d.auth_number]
        if auth.valid_from <= order.scheduled_date and auth.valid_to < order.scheduled_date:
            verb = "expired" if auth.valid_to < today else "expires"
            risks.append(AuthRisk(
                order.accession_number, order.scheduled_date, auth.auth_number, AUTH_WILL_EXPIRE,
                f"auth {auth.auth_number} {verb} on {auth.valid_to}, before the exam on {order.scheduled_date}; "
                f"ask the payer to extend it, or perform the exam by {auth.valid_to}.",
            ))

    counting: dict[str, list[Order]] = defaultdict(list)
    for acc, d in decisions.items():
        if d.served and d.basis == BASIS_AUTH and d.auth_number:
            counting[d.auth_number].append(orders[acc])
    for auth_number, queue in counting.items():
        left = by_number[auth_number].units_left
        if len(queue) <= left:
            continue
        queue.sort(key=lambda o: (o.scheduled_start, o.accession_number))
        for order in queue[left:]:
            if order.accession_number not in due_accessions:
                continue
            risks.append(AuthRisk(
                order.accession_number, order.scheduled_date, auth_number, AUTH_UNITS_SHORT,
                f"auth {auth_number} has {left} {'unit' if left == 1 else 'units'} left and {len(queue)} open orders count on it; "
                f"the earlier ones will use them before this exam on {order.scheduled_date}. "
                f"Ask the payer for more units, or cover this order with another auth.",
            ))
    risks.sort(key=lambda r: (r.scheduled_date, r.accession_number, r.code))
    return risks


def new_risks(risks: Iterable[AuthRisk], warned: set[tuple[str, str, str]]) -> list[AuthRisk]:
    """The risks not warned of before (``warned`` holds the keys already audited)."""
    return [r for r in risks if r.key not in warned]

