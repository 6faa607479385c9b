"""The RIS feed's use case: one message of the feed, applied whole or not at all.

A front end (``gateway/hl7``) reads a message into one of the plain events below and
calls :meth:`Feed.receive` once. The event's order fields are a record in the shape of a
file import (``examples/README.md``) and pass the same checks (:func:`worklist.intake.order_from_record`);
a problem is named by where the message carried the field (``where``: record field ->
location such as ``PID^1^7``). The changes, the audit events and the answer (the front
end's encoding of the :class:`Outcome`) are written in one transaction, committed before
the front end sends the answer; a message with a sender and control ID seen before gets
its first answer again and changes nothing.

What each order control does (docs/hl7.md): ``NW`` creates (the same order again is
accepted, another with the same accession number refused), ``XO`` changes the fields the
message gives, ``CA``/``OC`` cancel, ``DC`` discontinues, ``SC`` sets the status the
message names. A report sets the order's report status; a patient update changes name,
birth date and sex on every open order of the patient; a merge moves every order of the
prior patient ID to the new one. Orders whose gate decision may have changed are
re-gated (:meth:`worklist.gate.Gate.regate`).
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Callable, Union

import peewee as pw

from infra import audit
from infra.clock import Clock
from infra.errors import NotFound
from worklist import records
from worklist.gate import Gate
from worklist.intake import FieldError, order_from_record
from worklist.orders import Order

log = logging.getLogger("worklist.feed")

# Problem codes (HL7 table 0357, the ones docs/hl7.md names).
SEGMENT_SEQUENCE = "100"
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNSUPPORTED_VERSION = "203"
UNKNOWN_KEY = "204"
DUPLICATE_KEY = "205"
APPLICATION_ERROR = "207"

#: Answers: applied, not applied (content), not applied (message refused).
APPLIED, ERROR, REFUSED = "AA", "AE", "AR"

#: Order controls and the status each sets (SC: the status the message gives).
CONTROL_STATUS = {"CA": "cancelled", "OC": "cancelled", "DC": "discontinued"}
ORDER_CONTROLS = ("NW", "XO", "CA", "OC", "DC", "SC")


@dataclass(frozen=True)
class Problem:
    """One problem of a message: where (``SEG^1^FIELD``), the code, and a sentence."""

    location: str
    code: str
    text: str


@dataclass(frozen=True)
class Sender:
    """Who sent a message and how they named it (MSH-3, MSH-4, MSH-10, MSH-9)."""

    application: str
    facility: str
    control_id: str
    message_type: str

    @property
    def user(self) -> str:
        """The audit log's ``user`` of what this sender changes."""
        return f"hl7:{self.application}" + (f"^{self.facility}" if self.facility else "")

    @property
    def source(self) -> str:
        return f"{self.message_type} {self.control_id} from {self.application}^{self.facility}"


@dataclass(frozen=True)
class OrderEvent:
    """One order of an ORM/OMI message (ORC, OBR and what goes with them)."""

    control: str  # ORC-1
    record: dict  # the order fields the message gives, in the file-import shape
    where: dict[str, str]  # record field -> location in the message
    status: str = ""  # SC: the status ORC-5 names ("" for the other controls)


@dataclass(frozen=True)
class ReportEvent:
    """One OBR of an ORU: the order's report status."""

    accession_number: str
    status: str  # one of REPORT_STATUSES
    at: dt.datetime | None
    radiologist: str
    where: dict[str, str]


@dataclass(frozen=True)
class PatientUpdate:
    """ADT^A08: new name, birth date, sex of a patient (file-import fields under ``patient``)."""

    patient_id: str
    fields: dict  # {"name": ..., "birth_date": ..., "sex": ...}, only those given
    where: dict[str, str]


@dataclass(frozen=True)
class PatientMerge:
    """ADT^A40: every order of ``prior_id`` moves to ``patient_id``."""

    patient_id: str
    issuer: str
    prior_id: str
    where: dict[str, str]


Event = Union[OrderEvent, ReportEvent, PatientUpdate, PatientMerge]


@dataclass(frozen=True)
class Message:
    """What one message asks: its events, in order, or the problems found reading it."""

    events: tuple[Event, ...] = ()
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """What came of a message: the answer code, the problems, the orders changed."""

    code: str
    problems: tuple[Problem, ...] = ()
    changed: tuple[str, ...] = ()
    repeated: bool = False  # the answer is the one given to the same message before


class _NotApplied(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems


class Feed:
    """The RIS feed over one database: each message one call of :meth:`receive`."""

    def __init__(self, db: pw.Database, gate: Gate, clock: Clock) -> None:
        self.db = db
        self.gate = gate
        self.clock = clock

    def receive(self, sender: Sender, message: Message, answer: Callable[[Outcome], str]) -> tuple[Outcome, str]:
        """Apply ``message`` whole or not at all and keep ``answer(outcome)``; both committed on return.

        The same sender and control ID again: the first answer, and nothing changes. Two
        connections sending the same message at once: one applies it, the other's transaction
        fails on the answer's unique key, is rolled back whole, and gets the first answer.
        """
        try:
            return self._receive(sender, message, answer)
        except pw.IntegrityError:
            before = records.feed_answer(sender.application, sender.facility, sender.control_id)
            if before is None:
                raise
            log.info("%s arrived twice at once: answered %s as the first", sender.source, before.code)
            return Outcome(before.code, repeated=True), before.answer

    def _receive(self, sender: Sender, message: Message, answer: Callable[[Outcome], str]) -> tuple[Outcome, str]:
        with self.db.atomic():
            before = records.feed_answer(sender.application, sender.facility, sender.control_id)
            if before is not None:
                log.info("%s again: answered %s as the first time", sender.source, before.code)
                return Outcome(before.code, repeated=True), before.answer
            now = self.clock()
            if message.problems:
                outcome = Outcome(ERROR, message.problems)
            else:
                try:
                    with self.db.atomic():  # a savepoint: a problem undoes the events applied before it
                        changed = self._apply(sender, message.events, now)
                    outcome = Outcome(APPLIED, changed=tuple(changed))
                except _NotApplied as refused:
                    outcome = Outcome(ERROR, tuple(refused.problems))
            text = answer(outcome)
            records.add_feed_answer(sender.application, sender.facility, sender.control_id, sender.message_type,
                                    outcome.code, text, now)
        codes = " ".join(sorted({p.code for p in outcome.problems}))
        log.info("%s: %s%s%s", sender.source, outcome.code, f" ({codes})" if codes else "",
                 f", orders {' '.join(outcome.changed)}" if outcome.changed else "")
        return outcome, text

    # -- applying ---------------------------------------------------------------------------

    def _apply(self, sender: Sender, events: tuple[Event, ...], now: dt.datetime) -> list[str]:
        changed: list[str] = []
        regate: list[str] = []
        for event in events:
            if isinstance(event, OrderEvent):
                changed += self._order(sender, event, now)
            elif isinstance(event, ReportEvent):
                changed += self._report(sender, event)
            elif isinstance(event, PatientUpdate):
                moved = self._patient_update(sender, event, now)
                changed += moved
                regate += moved
            else:
                moved = self._merge(sender, event, now)
                changed += moved
                regate += moved
        if regate:
            self.gate.regate(regate, user=sender.user)
        return list(dict.fromkeys(changed))

    def _order(self, sender: Sender, event: OrderEvent, now: dt.datetime) -> list[str]:
        accession = str(event.record.get("accession_number") or "").strip()
        if not accession:
            raise _NotApplied([_problem(event.where, "accession_number", REQUIRED_FIELD_MISSING,
                                        "the order has no accession number; send it in IPC-1, OBR-18 or OBR-3")])
        existing = records.order(accession)
        if event.control == "NW":
            order = _checked(event.record, event.where)
            if existing is not None and _comparable(existing) != _comparable(order):
                raise _NotApplied([_problem(event.where, "accession_number", DUPLICATE_KEY,
                                            f"an order with accession number {accession} is already on file with "
                                            f"other content; send XO to change it")])
            if existing is not None:
                return []  # the same order again: nothing to change
        else:
            if existing is None:
                raise _NotApplied([_problem(event.where, "accession_number", UNKNOWN_KEY,
                                            f"no order with accession number {accession} is on file; send NW "
                                            f"first")])
            record = merged(record_of(existing), event.record)
            status = CONTROL_STATUS.get(event.control) or event.status
            if status:
                record["status"] = status
            order = _checked(record, event.where)
            if order == existing:
                return []
        records.upsert_orders(self.db, [order], now, user=sender.user, source=sender.source, audited=False)
        audit.record(now, sender.user, "order.feed", accession, f"ORC-1 {event.control}",
                     control=event.control, status=order.status, sending_application=sender.application,
                     sending_facility=sender.facility, control_id=sender.control_id)
        if existing is not None:  # a new order has no recorded decision to flip; the job records its first
            self.gate.regate([accession], user=sender.user)
        return [accession]

    def _report(self, sender: Sender, event: ReportEvent) -> list[str]:
        if not event.accession_number:
            raise _NotApplied([_problem(event.where, "accession_number", REQUIRED_FIELD_MISSING,
                                        "the report names no order; send the accession number in OBR-18 or OBR-3")])
        try:
            self.gate.set_report_status(event.accession_number, event.status, at=event.at,
                                        radiologist=event.radiologist, user=sender.user, source=sender.source)
        except NotFound:
            raise _NotApplied([_problem(event.where, "accession_number", UNKNOWN_KEY,
                                        f"no order with accession number {event.accession_number} is on file; "
                                        f"the report cannot be recorded")]) from None
        return [event.accession_number]

    def _patient_update(self, sender: Sender, event: PatientUpdate, now: dt.datetime) -> list[str]:
        orders = records.orders_of_patient(event.patient_id, open_only=True)
        changed = []
        for order in orders:
            record = record_of(order)
            record["patient"].update(event.fields)
            new = _checked(record, event.where)
            if new != order:
                changed.append(new)
        if changed:
            records.upsert_orders(self.db, changed, now, user=sender.user, source=sender.source, audited=False)
            for order in changed:
                audit.record(now, sender.user, "order.patient_update", order.accession_number, sender.source,
                             fields=sorted(event.fields), sending_application=sender.application,
                             sending_facility=sender.facility, control_id=sender.control_id)
        return [o.accession_number for o in changed]

    def _merge(self, sender: Sender, event: PatientMerge, now: dt.datetime) -> list[str]:
        if event.prior_id == event.patient_id:
            raise _NotApplied([_problem(event.where, "prior_id", DATA_TYPE_ERROR,
                                        "the prior patient ID (MRG-1) is the patient's own ID (PID-3); "
                                        "nothing to merge")])
        orders = records.orders_of_patient(event.prior_id)
        moved = []
        for order in orders:
            record = record_of(order)
            record["patient"]["id"] = event.patient_id
            record["patient"]["issuer"] = event.issuer
            moved.append(_checked(record, event.where))
        if moved:
            records.upsert_orders(self.db, moved, now, user=sender.user, source=sender.source, audited=False)
        for order in moved:
            audit.record(now, sender.user, "order.patient_merge", order.accession_number, sender.source,
                         prior_patient_id=event.prior_id, patient_id=event.patient_id,
                         sending_application=sender.application, sending_facility=sender.facility,
                         control_id=sender.control_id)
        return [o.accession_number for o in moved]


# ---------------------------------------------------------------- pure helpers


def _problem(where: dict[str, str], field_name: str, code: str, text: str) -> Problem:
    return Problem(where.get(field_name, field_name), code, text)


def _checked(record: dict, where: dict[str, str]) -> Order:
    """The order of ``record`` after the file import's checks, or :class:`_NotApplied` naming the field."""
    try:
        return order_from_record(record)
    except FieldError as bad:
        raise _NotApplied([field_problem(bad.field, bad.message, where)]) from None


def field_problem(field_name: str, message: str, where: dict[str, str]) -> Problem:
    """A check's complaint about a record field as a problem of the message: its location and code."""
    if message in ("is missing", "is empty"):
        code = REQUIRED_FIELD_MISSING
    elif " is not one of " in message:
        code = TABLE_VALUE_NOT_FOUND
    else:
        code = DATA_TYPE_ERROR
    location = where.get(field_name) or where.get(field_name.split("[")[0], field_name)
    return Problem(location, code, f"{location} ({field_name}) {message}")


def _comparable(order: Order) -> Order:
    """What a repeated NW must match: the order without what the gatekeeper adds to it."""
    import dataclasses

    return dataclasses.replace(order, study_instance_uid="", status="", auth_unit_used=None, report_status="",
                               report_status_at=None)


def record_of(order: Order) -> dict[str, Any]:
    """An order as a file-import record (examples/README.md): the inverse of ``order_from_record``."""
    return {
        "accession_number": order.accession_number,
        "status": order.status,
        "patient": {"id": order.patient_id, "issuer": order.patient_issuer, "name": order.patient_name,
                    "birth_date": order.birth_date.isoformat(), "sex": order.sex},
        "procedure": {"cpt": order.cpt, "description": order.description, "modality": order.modality,
                      "body_part": order.body_part, "laterality": order.laterality},
        "scheduled": {"start": order.scheduled_start.isoformat(), "station_ae": order.station_ae,
                      "station_name": order.station_name, "location": order.location},
        "ordering_provider": {"npi": order.ordering_npi, "name": order.ordering_name},
        "facility_npi": order.facility_npi,
        "payer": {"id": order.payer_id, "member_id": order.member_id, "plan_type": order.plan_type},
        "diagnoses": list(order.diagnoses),
        "study_instance_uid": order.study_instance_uid,
        "requested_procedure_id": order.requested_procedure_id,
        "scheduled_procedure_step_id": order.scheduled_procedure_step_id,
    }


def merged(base: dict, given: dict) -> dict:
    """``base`` with every value ``given`` has (nested objects merged key by key)."""
    out = copy.deepcopy(base)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out
