"""Rule 10 (docs/rules.md): forwarding archived studies to the destinations, as pure functions.

What to queue for a destination (:func:`wants`, :func:`enqueue_action`), when to try
again after a failure (:func:`next_attempt`), which transfer syntaxes to offer
(:func:`offered_syntaxes`), what a C-STORE status means for the queue item
(:func:`outcome_of_status`), and when the local copy of a forwarded study may go
(:func:`retention_due`). No database, network, file or clock here: :mod:`store.outbox`
loads the rows and passes the time in, :mod:`gateway.dicom.forwarder` does the sending.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable

# ---------------------------------------------------------------- the queue's states

#: Waiting to be sent (first time, or again after a failure or a correction).
PENDING = "pending"
#: The destination accepted the C-STORE (status success or warning).
SENT = "sent"
#: The destination's storage commitment report says it keeps the instance.
COMMITTED = "committed"
#: Given up: attempts exhausted, the instance cannot be sent as stored, or the
#: commitment report lists it as failed. ``gatekeeper forward retry`` queues it again.
FAILED = "failed"
FORWARD_STATES = (PENDING, SENT, COMMITTED, FAILED)

#: Audit action of a retry asked for on the command line, and of the retention job.
AUDIT_RETRY = "forward.retry"
AUDIT_REMOVED_AFTER_FORWARDING = "study.removed_after_forwarding"

# ---------------------------------------------------------------- destinations


@dataclass(frozen=True)
class Destination:
    """One ``[forward.NAME]`` table of settings.toml."""

    name: str
    ae_title: str
    host: str
    port: int
    calling_ae: str
    storage_commitment: bool = False
    modalities: frozenset[str] = frozenset()  # empty: every modality

    def done_state(self) -> str:
        """The state in which an instance is at this destination for good."""
        return COMMITTED if self.storage_commitment else SENT


def wants(destination: Destination, *, modality: str, received_from: str, corrected: bool) -> bool:
    """Whether an instance that became archived is queued for ``destination``.

    - The modality filter: a destination with ``modalities`` takes only those (an instance
      without a Modality goes only to destinations without a filter).
    - No loops: an instance received from the destination's own AE title goes back to it
      only when it was corrected (so the PACS gets the corrected instance), never when it
      was clean or released as it is.
    """
    if destination.modalities and modality.strip().upper() not in destination.modalities:
        return False
    if received_from.strip() and received_from.strip() == destination.ae_title and not corrected:
        return False
    return True


#: What :func:`enqueue_action` says to do with the queue row of (instance, destination).
INSERT, RESET, KEEP = "insert", "reset", "keep"


def enqueue_action(current: str | None, *, changed: bool) -> str:
    """What queueing an instance does to its row for one destination.

    ``current`` is the row's state (None: no row). ``changed`` is true when the instance's
    content changed since it was queued (corrected, or received again): then it is sent
    again whatever its state. Otherwise a row already pending stays as it is (its
    attempts and back-off too), one sent or committed stays done, and a failed one gets a
    new chance (the study was released or archived again).
    """
    if current is None:
        return INSERT
    if changed:
        return RESET
    if current == FAILED:
        return RESET
    return KEEP


# ---------------------------------------------------------------- back-off

#: Seconds before the second attempt; each later one waits twice as long, up to :data:`BACKOFF_CAP`.
BACKOFF_FIRST = 10
BACKOFF_CAP = 3600
#: Attempts after which an instance is failed (about a day with the schedule above).
MAX_ATTEMPTS = 30


def backoff_seconds(attempts: int) -> int:
    """Seconds to wait after the ``attempts``-th failed attempt (1, 2, ...): 10, 20, 40, ... up to an hour."""
    if attempts < 1:
        return 0
    return min(BACKOFF_FIRST * 2 ** min(attempts - 1, 30), BACKOFF_CAP)


def next_attempt(now: dt.datetime, attempts: int, max_attempts: int = MAX_ATTEMPTS) -> dt.datetime | None:
    """When to try again after the ``attempts``-th failure; None when it is time to give up."""
    if attempts >= max_attempts:
        return None
    return now + dt.timedelta(seconds=backoff_seconds(attempts))


# ---------------------------------------------------------------- transfer syntaxes

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
#: Syntaxes between which a dataset can be re-encoded without touching its pixel data's values.
UNCOMPRESSED = (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE)


def offered_syntaxes(stored: str) -> list[str]:
    """Transfer syntaxes to offer for an instance stored in ``stored``, preferred first:
    its own, then Explicit and Implicit VR Little Endian (the fall-backs every SCP takes)."""
    offered = [stored] if stored else []
    return offered + [ts for ts in (EXPLICIT_LE, IMPLICIT_LE) if ts not in offered]


def can_convert(stored: str, accepted: str) -> bool:
    """Whether an instance stored in ``stored`` may be sent in ``accepted`` (same, or both uncompressed)."""
    return stored == accepted or (stored in UNCOMPRESSED and accepted in UNCOMPRESSED)


# ---------------------------------------------------------------- answers of the destination

#: What a C-STORE response means for the item.
DONE, RETRY = "done", "retry"


def outcome_of_status(status: int | None) -> str:
    """Success (0x0000) and warnings (0xB000, 0xB006, 0xB007: stored, with a remark) are done;
    no answer (None: the association was lost) and every failure status are tried again
    with the back-off (out of resources and "cannot understand" may be temporary at a PACS)."""
    if status is None:
        return RETRY
    if status == 0x0000 or 0xB000 <= status <= 0xBFFF:
        return DONE
    return RETRY


# ---------------------------------------------------------------- figures


@dataclass(frozen=True)
class ForwardFigures:
    """The queue's figures as of now, for the report and /metrics (:meth:`store.outbox.Outbox.figures`)."""

    backlog: dict[str, int]  # pending instances per destination (every configured one, 0 when none)
    by_state: dict[str, dict[str, int]]  # destination -> state -> instances
    oldest_pending_seconds: float | None
    failures_by_status: dict[str, int]  # "0xA700", or "none" when the peer never answered


NO_FIGURES = ForwardFigures({}, {}, None, {})


# ---------------------------------------------------------------- retention


@dataclass(frozen=True)
class QueueItem:
    """One queue row as the retention rule needs it."""

    sop_instance_uid: str
    destination: str
    state: str
    done_at: dt.datetime | None  # committed_at for a commitment destination, else sent_at


def retention_due(*, study_state: str, instances: Iterable[str], items: Iterable[QueueItem],
                  destinations: dict[str, Destination], now: dt.datetime, days: int) -> bool:
    """Whether the local copy of a study may be removed (``storage.forwarded_retention_days``).

    Only an archived study (never a held one), only when ``days`` > 0, only when every
    instance is queued for at least one destination still configured and every item of a
    configured destination is done there (committed for a destination with storage
    commitment, sent or committed otherwise), and the last of them was done ``days`` days
    ago or more. A destination removed from settings no longer counts.
    """
    if days <= 0 or study_state != "archived":
        return False
    items = [i for i in items if i.destination in destinations]
    sops = set(instances)
    if not sops or not items:
        return False
    if sops - {i.sop_instance_uid for i in items}:
        return False  # an instance that went nowhere is kept
    last = None
    for item in items:
        wanted = destinations[item.destination].done_state()
        if not (item.state == wanted or (wanted == SENT and item.state == COMMITTED)):
            return False
        if item.done_at is None:
            return False
        last = item.done_at if last is None or item.done_at > last else last
    return now - last >= dt.timedelta(days=days)
