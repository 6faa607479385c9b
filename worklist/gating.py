"""Rule 1 (docs/rules.md): which orders the worklist serves, and why the others are withheld.

Pure functions over :mod:`worklist.orders` types. The caller passes the candidate
auths (normally every auth on file for the order's patient) and today's date; no
clock is read here.

Two questions, one answer: :func:`authorize` says whether the payer side of rule 1
lets an order be performed on a given day (NPIs, auth, override); :func:`decide` adds
the order's status and is what the worklist serves. The store asks :func:`authorize`
with the study date (``ORDER_NOT_AUTHORIZED``), so the worklist and the store always
agree on an order's authorization.

The date an auth must cover is the order's scheduled date, or today when the order
is overdue (scheduled in the past and still open): an exam is performed on the day
the console starts it, so an auth that expires at midnight stops serving at midnight.

Medical necessity (rule 7): when a necessity policy applies to the order (its payer and
CPT code), one of the order's diagnoses must be covered by it, else the order is withheld
with ``DIAGNOSIS_NOT_COVERED`` (``DIAGNOSIS_MISSING`` when it has none). It is a question
for the worklist only (:func:`decide`), not for :func:`authorize`: the store's
``ORDER_NOT_AUTHORIZED`` stays about the auth, and an MPPS completion still uses the auth
unit of an exam performed on it. An override sets these reasons aside too.

To add a reason code: a constant here, in :data:`REASON_CODES`, with its sentence where
it is found; then its row in docs/rules.md and a case in tests/test_gating.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable

from worklist.necessity import NecessityPolicy, applicable, covering
from worklist.npi import is_valid_npi
from worklist.orders import WORKABLE_STATUSES, Auth, Order, Override
from worklist.policy import PayerPolicy

# Reason codes (docs/rules.md, rule 1), in the order they are reported.
ORDER_NOT_SCHEDULED = "ORDER_NOT_SCHEDULED"
INVALID_NPI = "INVALID_NPI"
AUTH_MISSING = "AUTH_MISSING"
AUTH_NOT_APPROVED = "AUTH_NOT_APPROVED"
AUTH_CPT_MISMATCH = "AUTH_CPT_MISMATCH"
AUTH_FACILITY_MISMATCH = "AUTH_FACILITY_MISMATCH"
AUTH_ORDERING_NPI_MISMATCH = "AUTH_ORDERING_NPI_MISMATCH"
AUTH_DATE_OUT_OF_RANGE = "AUTH_DATE_OUT_OF_RANGE"
AUTH_EXHAUSTED = "AUTH_EXHAUSTED"
AUTH_LATERALITY_MISMATCH = "AUTH_LATERALITY_MISMATCH"
# Rule 7, medical necessity.
DIAGNOSIS_MISSING = "DIAGNOSIS_MISSING"
DIAGNOSIS_NOT_COVERED = "DIAGNOSIS_NOT_COVERED"

REASON_CODES = (
    ORDER_NOT_SCHEDULED, INVALID_NPI, AUTH_MISSING, AUTH_NOT_APPROVED, AUTH_CPT_MISMATCH,
    AUTH_FACILITY_MISMATCH, AUTH_ORDERING_NPI_MISMATCH, AUTH_DATE_OUT_OF_RANGE,
    AUTH_EXHAUSTED, AUTH_LATERALITY_MISMATCH, DIAGNOSIS_MISSING, DIAGNOSIS_NOT_COVERED,
)

# How a served order is covered.
BASIS_AUTH = "auth"
BASIS_NOT_REQUIRED = "no-auth-needed"
BASIS_OVERRIDE = "override"


@dataclass(frozen=True)
class Reason:
    """Why an order is withheld: a code for scripts and a sentence for people."""

    code: str
    text: str


@dataclass(frozen=True)
class Decision:
    """The gate's answer for one order on one day.

    ``auth_number`` names the auth used when served, or the closest auth compared
    against when withheld (None when there was none). ``reasons`` is empty when served
    on an auth or without need; with an override it keeps the reasons set aside.
    """

    accession_number: str
    served: bool
    basis: str | None
    auth_number: str | None
    reasons: tuple[Reason, ...]
    override: Override | None = None

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.reasons)

    def summary(self) -> str:
        """One line a person can read: served how, or withheld why."""
        if self.served and self.basis == BASIS_AUTH:
            return f"served, with auth {self.auth_number}"
        if self.served and self.basis == BASIS_NOT_REQUIRED:
            return "served, no auth needed"
        if self.served:
            o = self.override
            return f"served by override of {o.user} at {o.at:%Y-%m-%d %H:%M} ({o.reason})"
        return "withheld: " + " ".join(r.text for r in self.reasons)


def auth_date(order: Order, today: dt.date) -> dt.date:
    """The day an auth must cover: the scheduled day, or today for an overdue order."""
    return max(order.scheduled_date, today)


def auth_problems(order: Order, auth: Auth, on: dt.date) -> tuple[Reason, ...]:
    """Every way ``auth`` fails to cover ``order`` on day ``on``; empty when it covers it.

    An auth whose last unit this very order used (its exam completed, ``order.auth_unit_used``)
    still covers the order: images and re-queries of a performed exam come after that.
    """
    found = []
    if auth.status != "approved":
        found.append(Reason(AUTH_NOT_APPROVED, f"Auth {auth.auth_number} is {auth.status}, not approved; ask the payer for its decision."))
    if order.cpt not in auth.cpt_codes:
        found.append(Reason(AUTH_CPT_MISMATCH, f"Auth {auth.auth_number} covers CPT {', '.join(auth.cpt_codes)}, the order is for {order.cpt}; request an auth for {order.cpt} or correct the order's code."))
    if auth.facility_npi != order.facility_npi:
        found.append(Reason(AUTH_FACILITY_MISMATCH, f"Auth {auth.auth_number} names facility NPI {auth.facility_npi}, the order is performed at {order.facility_npi}; the payer must amend the auth's facility."))
    if auth.ordering_npi != order.ordering_npi:
        found.append(Reason(AUTH_ORDERING_NPI_MISMATCH, f"Auth {auth.auth_number} names ordering NPI {auth.ordering_npi}, the order was placed by {order.ordering_npi}; the payer must amend the auth's ordering provider."))
    if not auth.valid_from <= on <= auth.valid_to:
        found.append(Reason(AUTH_DATE_OUT_OF_RANGE, f"Auth {auth.auth_number} is valid {auth.valid_from} to {auth.valid_to}, the exam is on {on}; reschedule inside that window or ask the payer to extend it."))
    if auth.units_used >= auth.units and order.auth_unit_used != auth.auth_number:
        found.append(Reason(AUTH_EXHAUSTED, f"Auth {auth.auth_number} has used all {auth.units} approved {_units(auth.units)}; ask the payer for more units."))
    if auth.laterality and auth.laterality != (order.laterality or None):
        side = order.laterality or "no side"
        found.append(Reason(AUTH_LATERALITY_MISMATCH, f"Auth {auth.auth_number} is for laterality {auth.laterality}, the order is for {side}; correct the order or request an auth for the right side."))
    return tuple(found)


def _units(n: int) -> str:
    return "unit" if n == 1 else "units"


def closest_auth(order: Order, auths: Iterable[Auth], on: dt.date) -> tuple[Auth | None, tuple[Reason, ...]]:
    """The auth that covers the order, else the one with fewest problems.

    Only auths for the order's payer and patient are candidates. Ties go to the auth
    whose validity window is nearest the exam date, then to the most units left, then
    to the auth number, so the choice is stable.
    """
    candidates = [a for a in auths if a.payer_id == order.payer_id and a.patient_id == order.patient_id]
    if not candidates:
        return None, ()

    def distance(a: Auth) -> int:
        if a.valid_from <= on <= a.valid_to:
            return 0
        return min(abs((a.valid_from - on).days), abs((a.valid_to - on).days))

    scored = sorted(
        ((auth_problems(order, a, on), a) for a in candidates),
        key=lambda pa: (len(pa[0]), distance(pa[1]), -pa[1].units_left, pa[1].auth_number),
    )
    problems, best = scored[0]
    return best, problems


@dataclass(frozen=True)
class Authorization:
    """The payer side of rule 1 for one order on one day: may it be performed?

    ``authorized`` with ``basis`` (auth, no auth needed, override) and the auth used;
    otherwise every reason, from the closest auth (``auth_number``). With an override
    the reasons it set aside are kept.
    """

    authorized: bool
    basis: str | None
    auth_number: str | None
    reasons: tuple[Reason, ...]
    override: Override | None = None


def authorize(order: Order, auths: Iterable[Auth], policy: PayerPolicy, on: dt.date,
              override: Override | None = None) -> Authorization:
    """May ``order`` be performed on day ``on`` as far as its payer goes (rule 1 but the status)?

    Both NPIs must be valid; when the payer policy lists the order's CPT code, an auth
    must cover it on ``on`` (:func:`closest_auth`). An override sets every such reason aside.
    """
    reasons: list[Reason] = []
    bad = [f"{label} {npi!r}" for label, npi in (("ordering NPI", order.ordering_npi), ("facility NPI", order.facility_npi)) if not is_valid_npi(npi)]
    if bad:
        reasons.append(Reason(INVALID_NPI, f"The order's {' and '.join(bad)} is not a valid NPI (ten digits with a check digit); correct it in the RIS."))
    auth_number = None
    needs_auth = policy.requires_auth(order.payer_id, order.cpt)
    if needs_auth:
        best, problems = closest_auth(order, auths, on)
        if best is None:
            reasons.append(Reason(AUTH_MISSING, f"CPT {order.cpt} needs a prior authorization from payer {order.payer_id} and none is on file for patient {order.patient_id}; request one, or import it if it was granted."))
        else:
            auth_number = best.auth_number
            reasons.extend(problems)
    if not reasons:
        return Authorization(True, BASIS_AUTH if needs_auth else BASIS_NOT_REQUIRED, auth_number, ())
    if override is not None:
        return Authorization(True, BASIS_OVERRIDE, None, tuple(reasons), override)
    return Authorization(False, None, auth_number, tuple(reasons))


def necessity_problems(order: Order, policies: Iterable[NecessityPolicy]) -> tuple[Reason, ...]:
    """Rule 7, medical necessity: empty when no policy applies or a diagnosis is covered."""
    found = applicable(order, policies)
    if not found:
        return ()
    if not order.diagnoses:
        return (Reason(DIAGNOSIS_MISSING, f"Payer {order.payer_id} needs a diagnosis that justifies CPT {order.cpt} "
                                          f"and the order has none; have the ordering provider add the ICD-10 code "
                                          f"in the RIS."),)
    if covering(order, found):
        return ()
    accepted = sorted({code for p in found for code in p.covered_icd10})
    shown = ", ".join(accepted[:8]) + (f" and {len(accepted) - 8} more" if len(accepted) > 8 else "")
    return (Reason(DIAGNOSIS_NOT_COVERED, f"Payer {order.payer_id} does not accept diagnosis "
                                          f"{', '.join(order.diagnoses)} for CPT {order.cpt} (it accepts {shown}); "
                                          f"have the ordering provider confirm the diagnosis in the RIS."),)


def decide(
    order: Order,
    auths: Iterable[Auth],
    policy: PayerPolicy,
    today: dt.date,
    override: Override | None = None,
    necessity: Iterable[NecessityPolicy] = (),
) -> Decision:
    """Rule 1 for one order: served (how) or withheld (every reason, from the closest auth).

    The order must be scheduled or in progress, and :func:`authorize` must let it be
    performed on :func:`auth_date`; when a necessity policy applies, a diagnosis must be
    covered (:func:`necessity_problems`). An override cannot put a closed order back on the list.
    """
    needs = necessity_problems(order, necessity)
    if order.status not in WORKABLE_STATUSES:
        payer = authorize(order, auths, policy, auth_date(order, today))  # an override cannot reopen it
        closed = Reason(ORDER_NOT_SCHEDULED, f"The order is {order.status}; only scheduled or in-progress orders go on the worklist.")
        return Decision(order.accession_number, False, None, payer.auth_number, (closed, *payer.reasons, *needs))
    auth = authorize(order, auths, policy, auth_date(order, today), override)
    if not needs:
        return Decision(order.accession_number, auth.authorized, auth.basis, auth.auth_number, auth.reasons, auth.override)
    reasons = (*auth.reasons, *needs)
    if override is not None:
        return Decision(order.accession_number, True, BASIS_OVERRIDE, None, reasons, override)
    return Decision(order.accession_number, False, None, auth.auth_number, reasons)
