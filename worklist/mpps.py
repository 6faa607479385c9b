"""Modality Performed Procedure Step: the state machine and what it means for an order.

PS3.4 F.1.5 defines three states: a step is created IN PROGRESS (F.7.2.1.3, N-CREATE) and
ends COMPLETED or DISCONTINUED (F.7.2.2.3, N-SET); a step in a final state may no longer
be updated. Rule 6 (docs/rules.md) gives the order its part: IN PROGRESS marks the order
in-progress, COMPLETED marks it completed and uses one auth unit (once per order),
DISCONTINUED frees it to be performed again.

Pure functions over plain values: no pynetdicom, no database, no clock. A refused
request raises one of the named errors below (each a kind of :mod:`infra.errors` error);
the DICOM front end turns each into its status (:mod:`gateway.dicom.status`).
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.errors import AlreadyExists, InvalidInput, MissingValue, NotFound, WrongState
from worklist.gating import BASIS_AUTH, Decision

# Performed Procedure Step Status (0040,0252) values, PS3.4 F.1.5 (Table F.1-3).
IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
STEP_STATUSES = (IN_PROGRESS, COMPLETED, DISCONTINUED)
FINAL_STATUSES = frozenset({COMPLETED, DISCONTINUED})

# What a step's change of status does to its order.
START = "start"  # the modality began the exam
COMPLETE = "complete"  # the exam was performed
FREE = "free"  # the exam was abandoned: the order may be performed again
NO_EFFECT = "none"  # an interim update (series added, step still IN PROGRESS)

_EFFECT_OF = {IN_PROGRESS: START, COMPLETED: COMPLETE, DISCONTINUED: FREE}

#: Audit actions, one per transition.
AUDIT_ACTIONS = {START: "mpps.start", COMPLETE: "mpps.complete", FREE: "mpps.discontinue"}


class MissingStatus(MissingValue):
    """N-CREATE without Performed Procedure Step Status (0040,0252), a type 1 attribute."""


class InvalidStatus(InvalidInput):
    """A status the request may not carry: N-CREATE not IN PROGRESS (F.7.2.1.3), or an unknown value."""


class StepFinal(WrongState):
    """N-SET on a step already COMPLETED or DISCONTINUED (F.7.2.2.3): it may no longer be updated."""


class NoSuchStep(NotFound):
    """N-SET naming a SOP Instance this SCP never created."""


class DuplicateStep(AlreadyExists):
    """N-CREATE with a SOP Instance UID that already exists."""


@dataclass(frozen=True)
class PerformedSeries:
    """One item of Performed Series Sequence (0040,0340): a series and its instances."""

    series_instance_uid: str
    instance_uids: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepReport:
    """What an N-CREATE or N-SET says about one step, decoded from its dataset.

    ``status`` is None when an N-SET does not carry the status; ``performed_series`` is
    None when the request does not carry Performed Series Sequence (an empty tuple
    when it carries an empty one).
    """

    sop_instance_uid: str
    status: str | None = None
    accession_number: str | None = None
    performed_series: tuple[PerformedSeries, ...] | None = None
    discontinuation_reason: str = ""


@dataclass(frozen=True)
class Transition:
    """A step's status before and after a request, and the effect on its order."""

    before: str | None  # None for N-CREATE
    after: str
    effect: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def on_create(status: str | None) -> Transition:
    """N-CREATE (PS3.4 F.7.2.1.3): only IN PROGRESS may be created."""
    if status is None:
        raise MissingStatus("Performed Procedure Step Status (0040,0252) is missing")
    if _norm(status) != IN_PROGRESS:
        raise InvalidStatus(f"N-CREATE status must be IN PROGRESS, not {status[:16]!r}")
    return Transition(None, IN_PROGRESS, START)


def on_set(current: str, requested: str | None) -> Transition:
    """N-SET (PS3.4 F.7.2.2.3): only a step IN PROGRESS may change.

    An N-SET without a status, or with IN PROGRESS again, is an interim update (the
    modality adds series as it goes) and leaves the order alone.
    """
    if current in FINAL_STATUSES:
        raise StepFinal(f"the step is {current} and may no longer be updated; start a new step")
    if requested is None:
        return Transition(current, current, NO_EFFECT)
    wanted = _norm(requested)
    if wanted not in STEP_STATUSES:
        raise InvalidStatus(f"unknown status {requested[:16]!r}; use {', '.join(STEP_STATUSES)}")
    if wanted == current:
        return Transition(current, current, NO_EFFECT)
    return Transition(current, wanted, _EFFECT_OF[wanted])


def order_status_after(order_status: str, effect: str, other_steps_in_progress: bool = False) -> str:
    """The order's status once a step's transition has taken effect (docs/rules.md, rule 6).

    Only open orders move: a completed, cancelled or discontinued order keeps its
    status whatever a modality reports. A discontinued step frees an in-progress order
    back to scheduled, unless another step for the same order is still in progress.
    """
    if effect == START and order_status in ("scheduled", "in-progress"):
        return "in-progress"
    if effect == COMPLETE and order_status in ("scheduled", "in-progress"):
        return "completed"
    if effect == FREE and order_status == "in-progress" and not other_steps_in_progress:
        return "scheduled"
    return order_status


def unit_to_use(decision: Decision, already_used: str | None) -> str | None:
    """The auth whose unit a completed exam uses, or None.

    A unit is used once per order (``already_used`` names the auth that took it), and
    only when the order was served on an auth: an order that needs no auth, or is
    served by an override, uses none; neither does an order withheld at completion.
    """
    if already_used:
        return None
    if decision.served and decision.basis == BASIS_AUTH and decision.auth_number:
        return decision.auth_number
    return None


def station_refusal(calling_ae: str, order_station: str, any_station_aets) -> str | None:
    """None when ``calling_ae`` may report a step of an order scheduled on ``order_station``;
    else why not. A station reports its own orders; an AE of ``mpps.any_station_aets`` any order."""
    calling, station = calling_ae.strip(), (order_station or "").strip()
    if not station or calling == station or calling in any_station_aets:
        return None
    return (f"the order is scheduled on station {station}, not {calling}; list {calling} in mpps.any_station_aets "
            f"if it may perform other stations' exams")


def _norm(status: str) -> str:
    return " ".join(status.strip().upper().split())
