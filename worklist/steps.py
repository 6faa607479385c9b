"""Modality Performed Procedure Steps: record each step, move its order, use the auth unit once.

The use case behind the MPPS SCP (PS3.4 F.7; rule 6 of docs/rules.md); the state machine
is :mod:`worklist.mpps`. Each request is one transaction: the step row, the order's
status, the auth unit and the audit events commit together or not at all. The
once-per-order guard is a conditional UPDATE of ``OrderRow.auth_unit_used`` (only while
it is empty), so a repeated COMPLETED, or a second step for the same order, never uses a
second unit, even with several gateways sharing one database.

Modalities without MPPS (many DX and US rooms) never report a step: :meth:`Steps.complete_from_images`
completes such an order once its images are archived (the store's job decides when), with
the same once-per-order guard, so an MPPS that arrives afterwards links to the completed
order and never uses a second unit.

A step whose accession number is missing or matches no order is recorded all the same
(the unscheduled case, PS3.4 F.7.2.1.2 note 3) and logged at WARNING; the order updates
are then skipped.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass

import peewee as pw

from infra import audit
from infra.clock import Clock
from infra.errors import NotAuthorized
from worklist import mpps, records
from worklist.models import AuthRow, MppsRow, OrderRow
from worklist.mpps import DuplicateStep, NoSuchStep, StepFinal, StepReport, Transition
from worklist.orders import WORKABLE_STATUSES
from worklist.policy import PayerPolicy

log = logging.getLogger("worklist.steps")


@dataclass(frozen=True)
class StepOutcome:
    """What one N-CREATE or N-SET did.

    ``order_status`` is the order's status afterwards (None when the step names no
    known order); ``auth_unit_used`` names the auth whose unit this request used.
    """

    sop_instance_uid: str
    accession_number: str | None
    step_status: str
    order_status: str | None
    auth_unit_used: str | None = None


class Steps:
    """The MPPS use cases over one database."""

    def __init__(self, db: pw.Database, policy: PayerPolicy, clock: Clock,
                 any_station_aets: frozenset[str] = frozenset()) -> None:
        self.db = db
        self.policy = policy
        self.clock = clock
        #: Calling AEs that may report steps of orders scheduled on another station.
        self.any_station_aets = frozenset(any_station_aets)

    def _check_station(self, accession: str | None, calling_ae: str) -> None:
        """Raise :class:`~infra.errors.NotAuthorized` when the order is another station's."""
        if not accession:
            return
        order = OrderRow.get_or_none(OrderRow.accession_number == accession)
        why = mpps.station_refusal(calling_ae, order.station_ae, self.any_station_aets) if order else None
        if why:
            raise NotAuthorized(f"MPPS for order {accession} refused: {why}", rule="mpps.any_station_aets")

    def create(self, report: StepReport, calling_ae: str) -> StepOutcome:
        """N-CREATE: record a new step IN PROGRESS and start its order.

        Raises :class:`~worklist.mpps.MissingStatus` / :class:`~worklist.mpps.InvalidStatus`
        for a status other than IN PROGRESS, :class:`~worklist.mpps.DuplicateStep` when the
        SOP Instance UID exists.
        """
        transition = mpps.on_create(report.status)
        now = self.clock()
        try:
            with self.db.atomic():
                self._check_station(report.accession_number, calling_ae)
                if MppsRow.select().where(MppsRow.sop_instance_uid == report.sop_instance_uid).exists():
                    raise DuplicateStep("this step exists already; N-SET it, or N-CREATE with a new UID")
                MppsRow.create(
                    sop_instance_uid=report.sop_instance_uid,
                    accession_number=report.accession_number,
                    status=transition.after,
                    calling_ae=calling_ae,
                    performed_series=_series_json(report.performed_series or ()),
                    created_at=now,
                    updated_at=now,
                )
                return self._take_effect(report, report.accession_number, transition, calling_ae, now)
        except pw.IntegrityError:
            # Another association created the same UID between our check and our insert.
            raise DuplicateStep("this step exists already; N-SET it, or N-CREATE with a new UID") from None

    def set(self, report: StepReport, calling_ae: str) -> StepOutcome:
        """N-SET: update a step IN PROGRESS; COMPLETED or DISCONTINUED end it.

        Raises :class:`~worklist.mpps.NoSuchStep` for an unknown SOP Instance UID,
        :class:`~worklist.mpps.StepFinal` when the step has already ended and
        :class:`~worklist.mpps.InvalidStatus` for an unknown status value.
        """
        now = self.clock()
        with self.db.atomic():
            row = MppsRow.get_or_none(MppsRow.sop_instance_uid == report.sop_instance_uid)
            if row is None:
                raise NoSuchStep("no such step was created here; send its N-CREATE first")
            self._check_station(row.accession_number, calling_ae)
            transition = mpps.on_set(row.status, report.status)
            changes = {MppsRow.status: transition.after, MppsRow.updated_at: now}
            if report.performed_series is not None:
                changes[MppsRow.performed_series] = _series_json(report.performed_series)
            if transition.after == mpps.DISCONTINUED:
                changes[MppsRow.discontinuation_reason] = report.discontinuation_reason
            updated = (
                MppsRow.update(changes)
                .where((MppsRow.id == row.id) & (MppsRow.status == row.status))
                .execute()
            )
            if updated != 1:
                # A concurrent N-SET ended the step between our read and our write.
                raise StepFinal("the step was ended meanwhile and may no longer be updated")
            return self._take_effect(report, row.accession_number, transition, calling_ae, now)

    def complete_from_images(self, accession: str, study_instance_uid: str, *, user: str,
                             reason: str) -> StepOutcome | None:
        """Complete a scheduled order that no MPPS reported, from its archived study: the order
        leaves the worklist and uses its auth unit once (as MPPS COMPLETED would); audited
        (``order.completed_from_images``). None, changing nothing, when the order is gone, is no
        longer scheduled or has a step after all (checked again inside the transaction)."""
        now = self.clock()
        with self.db.atomic():
            order = OrderRow.get_or_none(OrderRow.accession_number == accession)
            if order is None or order.status != "scheduled":
                return None
            if MppsRow.select().where(MppsRow.accession_number == accession).exists():
                return None
            moved = (OrderRow.update(status="completed", updated_at=now)
                     .where((OrderRow.id == order.id) & (OrderRow.status == "scheduled")).execute())
            if moved != 1:
                return None  # another gateway completed it first
            unit = self._unit_for_completion(order, study_instance_uid, user, now,
                                             why=f"images of order {accession} arrived without MPPS")
            audit.record(now, user, "order.completed_from_images", accession, reason,
                         study_instance_uid=study_instance_uid, order={"before": "scheduled", "after": "completed"},
                         auth_unit_used=unit)
        log.info("order %s completed from its images (study %s, no MPPS)%s", accession, study_instance_uid,
                 f"; auth {unit} unit used" if unit else "")
        return StepOutcome(study_instance_uid, accession, "", "completed", unit)

    def step(self, sop_instance_uid: str) -> MppsRow | None:
        """The recorded step, for listings and tests."""
        return MppsRow.get_or_none(MppsRow.sop_instance_uid == sop_instance_uid)

    def _take_effect(self, report: StepReport, accession: str | None, transition: Transition, calling_ae: str,
                     now: dt.datetime) -> StepOutcome:
        """Move the step's order (if any), use the auth unit on completion, audit the transition."""
        uid = report.sop_instance_uid
        order = OrderRow.get_or_none(OrderRow.accession_number == accession) if accession else None
        if order is None:
            if transition.changed:
                why = "no accession number" if not accession else f"accession {accession} matches no order"
                log.warning("MPPS %s is %s with %s (unscheduled); recorded, no order updated",
                            uid, transition.after, why)
                _audit(transition, calling_ae, now, accession or uid, report, sop_instance_uid=uid, order=None)
            return StepOutcome(uid, accession, transition.after, None)
        if not transition.changed:
            return StepOutcome(uid, accession, transition.after, order.status)

        before = order.status
        others = (
            MppsRow.select()
            .where((MppsRow.accession_number == accession) & (MppsRow.status == mpps.IN_PROGRESS)
                   & (MppsRow.sop_instance_uid != uid))
            .exists()
        )
        after = mpps.order_status_after(before, transition.effect, others)
        unit = self._unit_for_completion(order, uid, calling_ae, now) if transition.effect == mpps.COMPLETE else None
        if after != before:
            OrderRow.update(status=after, updated_at=now).where(OrderRow.id == order.id).execute()
        elif before not in WORKABLE_STATUSES and before != "completed":
            log.warning("MPPS %s is %s but order %s is %s; it stays so, check the order in the RIS",
                        uid, transition.after, accession, before)
        _audit(transition, calling_ae, now, accession, report, sop_instance_uid=uid,
               order={"before": before, "after": after}, auth_unit_used=unit)
        return StepOutcome(uid, accession, transition.after, after, unit)

    def _unit_for_completion(self, order: OrderRow, uid: str, calling_ae: str, now: dt.datetime,
                             why: str = "") -> str | None:
        """Use one unit of the auth that serves the order now (rule 1 at completion time), once per order."""
        # The auth question alone: an exam performed on an auth uses its unit whatever the diagnosis.
        decision = records.decide_all([order.to_order()], self.policy, now.date(), necessity=False)[0]
        unit = mpps.unit_to_use(decision, order.auth_unit_used)
        if unit is None:
            if not decision.served and order.status in WORKABLE_STATUSES:
                log.warning("MPPS %s completed order %s while it was withheld (%s); no auth unit used",
                            uid, order.accession_number, " ".join(decision.codes))
            return None
        if not _use_unit(order.accession_number, unit, now):
            return None
        audit.record(now, calling_ae, "auth.unit_used", unit, why or f"MPPS completed order {order.accession_number}",
                     accession_number=order.accession_number, sop_instance_uid=uid)
        return unit


def _use_unit(accession: str, auth_number: str, now: dt.datetime) -> bool:
    """Claim the order's one unit, then count it on the auth; False when already claimed."""
    claimed = (
        OrderRow.update(auth_unit_used=auth_number, updated_at=now)
        .where((OrderRow.accession_number == accession)
               & (OrderRow.auth_unit_used.is_null() | (OrderRow.auth_unit_used == "")))
        .execute()
    )
    if claimed != 1:
        return False
    AuthRow.update(units_used=AuthRow.units_used + 1, updated_at=now).where(AuthRow.auth_number == auth_number).execute()
    return True


def _audit(transition: Transition, calling_ae: str, now: dt.datetime, subject: str, report: StepReport, **detail) -> None:
    reason = report.discontinuation_reason if transition.after == mpps.DISCONTINUED else ""
    series = report.performed_series
    audit.record(now, calling_ae, mpps.AUDIT_ACTIONS[transition.effect], subject, reason,
                 step_status=transition.after,
                 performed_series=[s.series_instance_uid for s in series] if series is not None else None,
                 **detail)


def _series_json(series) -> str:
    return json.dumps([
        {"series_instance_uid": s.series_instance_uid, "instance_uids": list(s.instance_uids)} for s in series
    ])
