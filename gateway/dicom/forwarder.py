"""Forwarding to the archive (rule 10 of docs/rules.md): the sender in the background of ``serve``.

One thread (:class:`Forwarder`) takes work from the queue (:class:`store.outbox.Outbox`:
the due instances of one study for one destination) and sends it on one association as
a Storage SCU, then, for a destination with ``storage_commitment = true``, asks it to
commit them (Storage Commitment Push Model SCU, N-ACTION). Receiving never waits for it:
it runs in its own thread, its database writes are short, one per instance.

- **Transfer syntax**: each instance's stored syntax is proposed first, in a context of its
  own, then Explicit and Implicit VR Little Endian in one each
  (:func:`store.forwarding.offered_syntaxes`). An instance goes in its stored syntax when
  the destination accepts it (the file's bytes as they are, streamed from disk), else it is
  re-encoded into an accepted uncompressed one (pixel data unchanged). A compressed instance
  that the destination takes only uncompressed cannot be sent and fails at once.
- **Failures**: a refused association, a lost peer or a failure status leaves the
  instances pending with a growing back-off (:func:`store.forwarding.next_attempt`); a
  destination that cannot be reached is not called again for the other studies until its
  back-off ends. Warnings (0xB000, 0xB006, 0xB007) count as sent.
- **Storage commitment**: the N-EVENT-REPORT may come on the same association (the
  sender waits :data:`REPORT_WAIT` seconds for it) or later on a new one to the
  gatekeeper's port: :func:`add_to` accepts the SCP role for Storage Commitment that the
  destination proposes (SCP/SCU Role Selection, PS3.4 J.3.3.1.2 note 1) and handles the
  report (:func:`on_n_event_report`). Instances become committed, or failed with the
  Failure Reason as their status.

The one start/stop hook of ``serve`` is :func:`start` (it returns the running
:class:`Forwarder`, or None when no destination is configured).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance

from gateway import logs
from gateway.app import App
from gateway.dicom import status as st
from gateway.dicom import syntaxes, tuning
from store import forwarding as rules
from store.outbox import Batch, SendItem

log = logging.getLogger("gateway.dicom.forwarder")

#: Seconds the sender waits on the association for a storage commitment report before releasing
#: (it stops waiting as soon as the report arrives, on this association or on a new one).
REPORT_WAIT = 2.0
#: Transaction UID -> set when its report came (the sender waits on it; either handler sets it).
_AWAITED: dict[str, threading.Event] = {}
#: Seconds between looks at the queue when nothing woke the sender (other gateways queue too).
POLL_SECONDS = 1.0
#: Renew the lease of a batch this often (seconds) while sending it.
RENEW_EVERY = 15.0
#: Presentation contexts one association may propose (PS3.8: odd IDs 1 to 255).
MAX_CONTEXTS = 128
#: Seconds to wait for the TCP connection to a destination.
CONNECT_TIMEOUT = 10


def add_to(ae, app: App, metrics=None) -> list:
    """Accept the Storage Commitment SCP role a destination proposes when it brings its report
    on a new association, and handle that report (N-EVENT-REPORT)."""
    # The context itself comes from gateway.dicom.commitment (the SCP role); adding it again
    # with roles keeps its syntaxes and accepts the proposed SCU and SCP roles.
    ae.add_supported_context(StorageCommitmentPushModel, syntaxes.NON_STORAGE, scu_role=True, scp_role=True)
    return [(evt.EVT_N_EVENT_REPORT, on_n_event_report, [app, metrics])]


def on_n_event_report(event, app: App, metrics=None):
    """EVT_N_EVENT_REPORT: a destination's Storage Commitment Result (PS3.4 J.3.3)."""
    started = time.monotonic()
    calling = event.assoc.requestor.ae_title if event.assoc.is_acceptor else event.assoc.acceptor.ae_title
    try:
        code = record_report(app, event, calling)
    except Exception as exc:  # the one outer guard
        status = st.failure(st.N_ACTION, exc, log, f"storage commitment report from {calling}")
        code = status.Status
    if metrics is not None:
        metrics.operation("N-EVENT-REPORT", code, time.monotonic() - started)
    return code, None


def record_report(app: App, event, calling: str) -> int:
    """Apply the report to the queue; the status to answer."""
    req = event.request
    if str(req.AffectedSOPClassUID) != StorageCommitmentPushModel:
        log.warning("N-EVENT-REPORT from %s for SOP class %s ignored: only Storage Commitment reports are "
                    "expected", calling, req.AffectedSOPClassUID)
        return st.NO_SUCH_SOP_INSTANCE
    info = event.event_information
    transaction = str(info.get("TransactionUID", ""))
    if not transaction:
        return st.INVALID_ARGUMENT_VALUE
    committed = [str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])
                 if "ReferencedSOPInstanceUID" in i]
    failed = [(str(i.ReferencedSOPInstanceUID), int(i.FailureReason) if "FailureReason" in i else None)
              for i in info.get("FailedSOPSequence", []) if "ReferencedSOPInstanceUID" in i]
    done, lost = app.store.outbox.commitment_result(transaction, committed, failed)
    waiting = _AWAITED.get(transaction)
    if waiting is not None:
        waiting.set()
    log.info("storage commitment report from %s: transaction %s, %d instances committed, %d failed "
             "(%d and %d listed)", calling, transaction, done, lost, len(committed), len(failed),
             extra=logs.operation(event.assoc, "N-EVENT-REPORT", st.SUCCESS))
    return st.SUCCESS


def start(app: App) -> "Forwarder | None":
    """Start the sender when settings name destinations (``[forward.NAME]``); None otherwise."""
    if not app.settings.destinations:
        return None
    forwarder = Forwarder(app)
    forwarder.start()
    return forwarder


class Forwarder:
    """The background sender: one thread, one association at a time."""

    def __init__(self, app: App, poll_seconds: float = POLL_SECONDS) -> None:
        self.app = app
        self.outbox = app.store.outbox
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resting: dict[str, float] = {}  # destination -> monotonic time its back-off ends
        # Outcomes are written by a thread of their own while the next instance goes out:
        # one queued, one being written, one in flight, so a kill -9 re-sends at most three.
        self._outcomes: queue.Queue = queue.Queue(maxsize=1)
        self._writer: threading.Thread | None = None
        self.outbox.listeners.append(self._wake.set)

    def start(self) -> None:
        # Send a file's dataset from disk as it is, in pieces, rather than decoding it whole
        # (pynetdicom's own setting; the sender re-encodes only when it must convert).
        _config.STORE_SEND_CHUNKED_DATASET = True
        self._thread = threading.Thread(target=self._run, name="gatekeeper-forward", daemon=True)
        self._writer = threading.Thread(target=self._write_outcomes, name="gatekeeper-forward-record", daemon=True)
        self._writer.start()
        self._thread.start()
        names = ", ".join(f"{d.name} ({d.ae_title} at {d.host}:{d.port})" for d in self.app.settings.destinations)
        log.info("forwarding to %s", names)

    def stop(self, timeout: float = 30) -> None:
        """Finish the instance being sent, give the rest of its study back to the queue, release, and stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._writer is not None:
            self._outcomes.put(None)
            self._writer.join(timeout)

    def _write_outcomes(self) -> None:
        while (work := self._outcomes.get()) is not None:
            record, args = work
            try:
                record(*args)
            except Exception:
                log.exception("forwarding: could not record an outcome (the lease lapses and it is sent again)")
            finally:
                self._outcomes.task_done()
        self._outcomes.task_done()

    def _later(self, record, *args) -> None:
        """Record an outcome in the writer thread (in order); :meth:`_settled` waits for them all."""
        if self._writer is None:  # not started (a test driving send() directly): write now
            record(*args)
        else:
            self._outcomes.put((record, args))

    def _settled(self) -> None:
        if self._writer is not None:
            self._outcomes.join()

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        if self.app.db.__class__.__name__.lower().startswith("sqlite"):
            released = self.outbox.release_claims()  # one sender per SQLite database: earlier leases are dead
            if released:
                log.info("forwarding: %d instances left leased by a previous run are queued again", released)
        while not self._stop.is_set():
            try:
                batch = self.outbox.claim(exclude=self._rest_list())
            except Exception:
                log.exception("forwarding: could not read the queue; trying again in %.0f s", self.poll_seconds)
                self._stop.wait(self.poll_seconds)
                continue
            if batch is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            try:
                self.send(batch)
            except Exception as exc:
                log.exception("forwarding study %s to %s failed", batch.study_instance_uid, batch.destination.name)
                self._record_failure(batch, list(batch.items), f"unexpected error while sending: {exc}", None)

    def _rest_list(self) -> set[str]:
        now = time.monotonic()
        for name, until in list(self._resting.items()):
            if until <= now:
                del self._resting[name]
        return set(self._resting)

    def _record_failure(self, batch: Batch, items: list[SendItem], error: str, status: int | None) -> None:
        try:
            self.outbox.attempt_failed(batch, items, error, status)
        except Exception:
            log.exception("forwarding: could not record a failed attempt (the lease lapses and it is tried again)")

    # ------------------------------------------------------------------ one association

    def send(self, batch: Batch) -> None:
        """Send the batch on one association; record each instance's outcome as it comes."""
        dest = batch.destination
        s = self.app.settings
        items = list(batch.items)
        ae = AE(ae_title=dest.calling_ae)
        ae.acse_timeout = min(s.network_timeout, 30)
        ae.dimse_timeout = s.network_timeout
        ae.network_timeout = s.network_timeout
        ae.connection_timeout = CONNECT_TIMEOUT
        items = self._propose(ae, items, dest.storage_commitment)
        handlers = [(evt.EVT_CONN_OPEN, tuning.no_delay)]
        if dest.storage_commitment:
            handlers.append((evt.EVT_N_EVENT_REPORT, self._on_report_here))
        where = f"{dest.name} ({dest.ae_title} at {dest.host}:{dest.port})"
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, evt_handlers=handlers)
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "did not answer"
            error = f"{where} {why}; check that it is up and knows {dest.calling_ae} as a caller"
            self._record_failure(batch, items, error, None)
            attempts = min(i.attempts for i in items) + 1 if items else 1
            self._resting[dest.name] = time.monotonic() + rules.backoff_seconds(attempts)
            log.warning("forwarding study %s: %s; %d instances wait (attempt %d)", batch.study_instance_uid, error,
                        len(items), attempts)
            return
        self._resting.pop(dest.name, None)
        sent: list[SendItem] = []
        started = renewed = time.monotonic()
        try:
            for n, item in enumerate(items):
                if self._stop.is_set():  # serve is stopping: the rest goes back to the queue
                    self._settled()
                    self.outbox.unclaim(batch)
                    log.info("forwarding study %s to %s stopped: %d instances left for the next start",
                             batch.study_instance_uid, where, len(items) - n)
                    break
                if time.monotonic() - renewed > RENEW_EVERY:
                    self.outbox.renew(batch)
                    renewed = time.monotonic()
                outcome = self._store_one(assoc, batch, item)
                if outcome == "sent":
                    sent.append(item)
                elif outcome == "lost":
                    self._record_failure(batch, items[n:], f"the association with {where} was lost", None)
                    break
            self._settled()  # every outcome written before the commitment request names the rows
            if dest.storage_commitment and sent and assoc.is_established:
                self._request_commitment(assoc, batch, sent)
        finally:
            self._settled()
            if assoc.is_established:
                assoc.release()
        took = time.monotonic() - started
        log.info("forwarded study %s to %s: %d of %d instances sent in %.1f s", batch.study_instance_uid, where,
                 len(sent), len(items), took)

    def _propose(self, ae: AE, items: list[SendItem], commitment: bool) -> list[SendItem]:
        """Add the requested contexts; the items they cover (the rest wait for their lease to lapse)."""
        wanted: OrderedDict[tuple[str, str], None] = OrderedDict()
        room = MAX_CONTEXTS - (1 if commitment else 0)
        covered = []
        for item in items:
            pairs = [(item.sop_class_uid, ts) for ts in rules.offered_syntaxes(item.transfer_syntax_uid)]
            new = [p for p in pairs if p not in wanted]
            if len(wanted) + len(new) > room:
                continue
            for p in new:
                wanted[p] = None
            covered.append(item)
        for sop_class, ts in wanted:
            ae.add_requested_context(sop_class, ts)
        if commitment:
            ae.add_requested_context(StorageCommitmentPushModel, [rules.EXPLICIT_LE, rules.IMPLICIT_LE])
        return covered

    def _store_one(self, assoc, batch: Batch, item: SendItem) -> str:
        """C-STORE one instance: "sent", "refused" (recorded), "failed" (recorded) or "lost"."""
        dest = batch.destination
        accepted = [c.transfer_syntax[0] for c in assoc.accepted_contexts
                    if c.abstract_syntax == item.sop_class_uid and c.transfer_syntax]
        stored = item.transfer_syntax_uid
        if not item.path.is_file():
            self.outbox.give_up(batch, item, "the instance's file is missing on the gateway; restore it from a backup")
            return "failed"
        if stored in accepted:
            payload = item.path  # the file's bytes as they are
        else:
            usable = [ts for ts in accepted if rules.can_convert(stored, ts)]
            if not usable:
                offered = ", ".join(rules.offered_syntaxes(stored))
                why = ("accepted no context for SOP class " + item.sop_class_uid) if not accepted else (
                    f"accepts SOP class {item.sop_class_uid} only in {', '.join(accepted)}, and the instance is "
                    f"stored in {stored}, which is not converted")
                self.outbox.give_up(batch, item, f"{dest.ae_title} {why} (offered {offered}); configure the "
                                                 "destination to accept it, then 'gatekeeper forward retry'")
                return "failed"
            payload = _converted(item, usable[0])
        try:
            answer = assoc.send_c_store(payload)
        except (RuntimeError, ValueError, AttributeError, OSError) as exc:
            if not assoc.is_established:
                return "lost"
            self.outbox.give_up(batch, item, f"could not send the instance: {exc}")
            return "failed"
        code = answer.Status if answer is not None and "Status" in answer else None
        if code is None:
            return "lost"
        if rules.outcome_of_status(code) == rules.DONE:
            note = "" if code == st.SUCCESS else f"stored with warning 0x{code:04X}"
            self._later(self.outbox.sent, batch, item, code, note)
            return "sent"
        self._record_failure(batch, [item], f"{dest.ae_title} refused the instance with status 0x{code:04X}", code)
        return "refused"

    def _request_commitment(self, assoc, batch: Batch, sent: list[SendItem]) -> None:
        dest = batch.destination
        transaction = generate_uid()
        info = Dataset()
        info.TransactionUID = transaction
        references = []
        for item in sent:
            ref = Dataset()
            ref.ReferencedSOPClassUID = item.sop_class_uid
            ref.ReferencedSOPInstanceUID = item.sop_instance_uid
            references.append(ref)
        info.ReferencedSOPSequence = references
        arrived = _AWAITED[transaction] = threading.Event()
        try:
            self.outbox.commitment_requested(batch, sent, transaction)  # before: a quick report finds its rows
            try:
                answer, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance)
            except (RuntimeError, ValueError) as exc:
                log.warning("storage commitment request to %s not sent (%s); the instances stay sent, not committed",
                            dest.ae_title, exc)
                return
            code = answer.Status if answer is not None and "Status" in answer else None
            if code != st.SUCCESS:
                log.warning("storage commitment request to %s for study %s answered %s; the instances stay sent, "
                            "not committed", dest.ae_title, batch.study_instance_uid,
                            "nothing" if code is None else f"0x{code:04X}")
                return
            log.info("storage commitment requested from %s for study %s: transaction %s, %d instances",
                     dest.ae_title, batch.study_instance_uid, transaction, len(sent))
            arrived.wait(REPORT_WAIT)  # a report on this association; else it comes on a new one
        finally:
            _AWAITED.pop(transaction, None)

    def _on_report_here(self, event):
        """A report on the sender's own association."""
        return record_report(self.app, event, event.assoc.acceptor.ae_title), None


def _converted(item: SendItem, syntax: str) -> Dataset:
    """The instance as a dataset, for pynetdicom to re-encode in the accepted uncompressed
    ``syntax`` (it picks the accepted context and encodes in its syntax; pixel data as it is)."""
    return dcmread(item.path)
