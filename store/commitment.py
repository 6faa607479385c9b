"""Storage commitment (PS3.4 J.3, Push Model): which referenced instances are committed, and why not.

Rule 6 of docs/rules.md: an instance is committed only when it is durably stored. Here that means the
index knows the instance under the same SOP class, its file is on disk, and its study is
kept (archived, or held for review: a held study is stored whole and never silently
dropped, rule 4). Anything else fails, with a named reason.

Pure: the caller looks the references up in the index and on disk and passes plain
:class:`StoredInstance` values in; :func:`assess` returns the report content (PS3.4
J.3.3.1.1) as plain data. The gateway turns reasons into Failure Reason codes and the
report into an N-EVENT-REPORT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from infra.errors import InvalidInput
from store.states import ARCHIVED, HELD

#: Study states whose instances are committed.
KEPT_STATES = frozenset({ARCHIVED, HELD})

# Why an instance is not committed (PS3.3 C.14.1.1 Failure Reason, by name).
NO_SUCH_OBJECT = "no-such-object"  # never received (0112H)
CLASS_CONFLICT = "class-instance-conflict"  # received under another SOP class (0119H)
NOT_DURABLE = "not-durable"  # known but not kept: file missing, study rejected or purged (0110H)


class CommitmentRequestError(InvalidInput):
    """The N-ACTION Action Information is unusable; the message says what to fix."""


@dataclass(frozen=True)
class Reference:
    """One item of Referenced SOP Sequence (0008,1199)."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class CommitmentRequest:
    """A Storage Commitment Request, N-ACTION action type 1 (PS3.4 J.3.2.1.1)."""

    transaction_uid: str
    references: tuple[Reference, ...]


@dataclass(frozen=True)
class StoredInstance:
    """What the store says about one instance: its class, its study's state, its file."""

    sop_instance_uid: str
    sop_class_uid: str
    study_state: str | None  # None when the study row is missing
    file_present: bool


@dataclass(frozen=True)
class Failure:
    """An instance the gatekeeper does not commit to keep, and why."""

    reference: Reference
    reason: str
    text: str


@dataclass(frozen=True)
class CommitmentReport:
    """The Storage Commitment Result (PS3.4 J.3.3.1.1) as plain data.

    Every referenced instance is in ``committed`` or in ``failed``, in request order.
    """

    transaction_uid: str
    committed: tuple[Reference, ...]
    failed: tuple[Failure, ...]

    @property
    def all_committed(self) -> bool:
        """Event type 1 (all committed) when true, else 2 (failures exist)."""
        return not self.failed


def request_from(transaction_uid: str | None, references: Iterable[tuple[str | None, str | None]]) -> CommitmentRequest:
    """Check the Action Information (PS3.4 Table J.3-1: all type 1) and build the request."""
    if not transaction_uid or not str(transaction_uid).strip():
        raise CommitmentRequestError("Transaction UID (0008,1195) is missing")
    refs = []
    for index, (sop_class, sop_instance) in enumerate(references, start=1):
        if not sop_class or not sop_instance:
            raise CommitmentRequestError(f"Referenced SOP Sequence item {index} lacks a UID")
        refs.append(Reference(str(sop_class).strip(), str(sop_instance).strip()))
    if not refs:
        raise CommitmentRequestError("Referenced SOP Sequence (0008,1199) is empty")
    return CommitmentRequest(str(transaction_uid).strip(), tuple(refs))


def judge(reference: Reference, stored: StoredInstance | None) -> Failure | None:
    """Why ``reference`` is not committed, or None when it is durably stored."""
    uid = reference.sop_instance_uid
    if stored is None:
        return Failure(reference, NO_SUCH_OBJECT, f"instance {uid} was never received; send it again, then ask again")
    if stored.sop_class_uid != reference.sop_class_uid:
        return Failure(reference, CLASS_CONFLICT,
                       f"instance {uid} was received as SOP class {stored.sop_class_uid}, not {reference.sop_class_uid}")
    if stored.study_state not in KEPT_STATES:
        state = stored.study_state or "unknown"
        return Failure(reference, NOT_DURABLE, f"instance {uid} belongs to a study that is {state}, not kept")
    if not stored.file_present:
        return Failure(reference, NOT_DURABLE, f"instance {uid} is indexed but its file is missing; send it again")
    return None


def assess(request: CommitmentRequest, stored: Mapping[str, StoredInstance]) -> CommitmentReport:
    """Judge each referenced instance against what the store holds (PS3.4 J.3.3.1.2)."""
    committed, failed = [], []
    for ref in request.references:
        failure = judge(ref, stored.get(ref.sop_instance_uid))
        if failure is None:
            committed.append(ref)
        else:
            failed.append(failure)
    return CommitmentReport(request.transaction_uid, tuple(committed), tuple(failed))
