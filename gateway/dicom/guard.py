"""Admission control: which connections hold one of the server's association slots, and for how long.

pynetdicom counts every accepted connection against ``ae.maximum_associations``, from the
moment it is accepted until its thread ends, which is ``acse_timeout`` after it connected
even when the peer left at once: 30 silent sockets, or 25 HTTP requests, locked every
console out for half a minute. The server switches that count off
(:func:`gateway.dicom.server.build_ae`) and binds the :class:`Guard`'s handlers instead:

- **Only associations count.** A connection takes a slot when its A-ASSOCIATE-RQ is admitted
  (``EVT_REQUESTED``, before negotiation) and gives it back as soon as it is released,
  aborted, rejected or its connection closes. A connection that never delivers an
  A-ASSOCIATE-RQ never takes one.
- **Limits.** An A-ASSOCIATE-RQ beyond ``server.max_associations`` in all, or beyond
  ``server.max_associations_per_address`` from the peer's network address (0: no cap of its
  own), is answered with an A-ASSOCIATE-RJ (PS3.8 9.3.4): result 2, rejected-transient;
  source 3, DICOM UL service-provider (presentation related function); reason 2,
  local-limit-exceeded. The log names the rule that refused it.
- **A bounded time to associate.** From connecting to a complete A-ASSOCIATE-RQ a peer has
  ``server.associate_timeout`` seconds in all: that is the association's ARTIM timer
  (PS3.8 9.1.5, started when the connection is accepted and stopped by the A-ASSOCIATE-RQ),
  which pynetdicom ties to ``acse_timeout``; the guard sets it for the connection and gives
  the association the AE's own ``acse_timeout`` back once admitted. When it expires the
  connection is closed, even in the middle of a read (:mod:`.tuning`, change 5).

``tests/test_tuning.py`` checks the pynetdicom behaviour this relies on: the ARTIM timer
follows ``acse_timeout``, and a rejection sent from an ``EVT_REQUESTED`` handler is honoured.
"""

from __future__ import annotations

import threading

from pynetdicom import evt

#: A-ASSOCIATE-RJ for a limit reached (PS3.8 9.3.4): rejected-transient, DICOM UL
#: service-provider (presentation related function), local-limit-exceeded.
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


class Guard:
    """Counts admitted associations, in all and per peer address, for one server."""

    def __init__(self, max_associations: int, max_per_address: int, associate_timeout: float,
                 admission=None, slots=None) -> None:
        #: ``admission(assoc)``: None, or the (A-ASSOCIATE-RJ, rule) of an association the
        #: access rules turn away (:meth:`gateway.dicom.permissions.Permissions.admission`);
        #: asked before the limits, so a refused peer never holds a slot.
        self.admission = admission
        self.max_associations = max_associations
        self.max_per_address = max_per_address
        self.associate_timeout = associate_timeout
        #: :class:`gateway.dicom.slots.SharedSlots` when several processes receive: the
        #: limits count their associations too; None counts this process's alone.
        self.slots = slots
        self._lock = threading.Lock()
        self._admitted: dict = {}  # Association -> peer address (or its shared Slot)

    def handlers(self) -> list:
        """The event handlers to start the server with."""
        ended = (evt.EVT_RELEASED, evt.EVT_ABORTED, evt.EVT_REJECTED, evt.EVT_CONN_CLOSE)
        return [(evt.EVT_CONN_OPEN, self._on_conn_open), (evt.EVT_REQUESTED, self._on_requested),
                *((event, self._on_ended) for event in ended)]

    def _on_conn_open(self, event) -> None:
        event.assoc.acse_timeout = self.associate_timeout  # ARTIM and the wait for the -RQ

    def _on_requested(self, event) -> None:
        assoc = event.assoc
        address = assoc.requestor.address
        denied = self.admission(assoc) if self.admission is not None else None
        if denied is not None:
            rejection, refusal = denied
        else:
            rejection, refusal = LOCAL_LIMIT_EXCEEDED, self._admit(assoc, address)
        if refusal is None:
            assoc.acse_timeout = assoc.ae.acse_timeout
            return
        # As pynetdicom rejects (acse.ACSE._negotiate_as_acceptor); it skips negotiation
        # for an association a handler of EVT_REQUESTED has rejected.
        assoc.gk_refusal = refusal  # type: ignore[attr-defined]  # for the server's log line
        assoc.acse.send_reject(*rejection)
        assoc.is_rejected = True
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()  # returns once the A-ASSOCIATE-RJ is sent and the connection closed

    def _admit(self, assoc, address: str) -> str | None:
        """None when ``assoc`` takes a slot; else the rule that refuses it."""
        with self._lock:
            self._forget_finished()
            if self.slots is not None:
                slot, refused = self.slots.take(address, self.max_per_address)
                if slot is not None:
                    self._admitted[assoc] = slot
                return refused
            total = len(self._admitted)
            if total >= self.max_associations:
                return f"{total} associations already (server.max_associations = {self.max_associations})"
            mine = sum(1 for a in self._admitted.values() if a == address)
            if self.max_per_address and mine >= self.max_per_address:
                return (f"{mine} associations from {address} already "
                        f"(server.max_associations_per_address = {self.max_per_address})")
            self._admitted[assoc] = address
            return None

    def _on_ended(self, event) -> None:
        with self._lock:
            _give_back(self._admitted.pop(event.assoc, None))

    def _forget_finished(self) -> None:
        # In case an association ended without any of the events (its thread is gone).
        for assoc in [a for a in self._admitted if not a.is_alive()]:
            _give_back(self._admitted.pop(assoc))


def _give_back(held) -> None:
    release = getattr(held, "release", None)  # a shared Slot; an address needs nothing
    if release is not None:
        release()


def refusal(assoc) -> str | None:
    """The rule by which the guard rejected ``assoc``, if it did."""
    return getattr(assoc, "gk_refusal", None)
