"""Storage SCP (PS3.4 Annex B): C-STORE of every standard storage SOP class, reconciled and filed.

Thin handler: the dataset arrives as a file, one call into :class:`store.store.Store`
reconciles and files it (rules 3 and 4 of docs/rules.md), the answer is a status
(:func:`gateway.dicom.status.failure` maps a refusal). The one outer guard
logs anything unexpected and answers 0xC000; the handler never raises.

Contexts: the 170 storage SOP classes pynetdicom knows (``AllStoragePresentationContexts``)
with the transfer syntaxes of :data:`gateway.dicom.syntaxes.STORAGE`: uncompressed, lossless,
lossy and video, never Deflated Explicit VR Little Endian (a deflated dataset is inflated
whole in memory to be read: 1 MB can become 1 GiB; see :mod:`gateway.dicom.syntaxes`).
The limit of 128 presentation contexts binds what one association *proposes*, not what
an acceptor supports, so every class is supported; each sender proposes the (at most 128)
it needs. Private and unknown SOP classes are rejected at association time (pynetdicom's
``UNRESTRICTED_STORAGE_SERVICE`` would accept them, but it is a process-wide switch that
also routes unknown classes of other services to storage; a sender that needs a private
class gets a clear rejection).

Large instances are not held in memory: pynetdicom writes each received dataset straight
to a Part 10 file in the store's incoming folder (128-byte preamble, ``DICM``, File Meta
Information built from the request's SOP Class and Instance UIDs and the context's
transfer syntax, then the dataset bytes exactly as received) and hands its path to the
handler (:mod:`gateway.dicom.tuning`, changes 2 and 3). pynetdicom deletes its file
after the handler returns; a filed one is gone by then.

Before a dataset is written, the store is asked whether the volume keeps its free-space
reserve (``storage.min_free_mb``, :meth:`store.archive.Archive.check_room`); when it does
not, the dataset's bytes are read off the association and dropped, nothing touches the
disk, and the answer is 0xA700. A write that fails while the dataset arrives (disk full,
any I/O error) removes the partial file at once; the rest of the dataset is dropped and the
answer is 0xA700 (no space, quota, descriptors) or 0xC000 (any other error). Either way the
association stays usable.

Before 0x0000 the store checks that the dataset is whole under the negotiated transfer
syntax (:mod:`store.integrity`: every element fits, pixel data as long as the image
attributes say, encapsulated fragments closed); a truncated or mis-encoded dataset gets
0xC000, the reason is logged, and nothing is kept.

| outcome | status |
|---|---|
| stored and indexed (archived or held) | 0x0000 Success |
| below the free-space reserve, disk full, quota, out of memory or descriptors | 0xA700 Refused: out of resources |
| dataset's SOP Class/Instance UID differ from the request's | 0xA900 Data set does not match SOP class |
| unreadable, truncated or mis-encoded dataset, malformed UIDs, any other failure | 0xC000 Cannot understand |
"""

from __future__ import annotations

import functools
import logging
import os
import time

from pynetdicom import AllStoragePresentationContexts, evt

from gateway import logs
from gateway.dicom import status as st
from gateway.dicom import syntaxes, tuning
from infra.errors import GatekeeperError, OutOfResources, StorageFailure
from store.archive import RESOURCE_ERRNOS
from store.receiving import Session
from store.store import Store

log = logging.getLogger("gateway.dicom.storage")


def add_to(ae, app, metrics=None) -> list:
    """Support every storage SOP class; return the C-STORE handler bound to the store (and the
    server's :class:`gateway.metrics.Metrics`, when it has one)."""
    store = app.store
    tuning.receive_into(ae, store.archive.incoming,
                        check_room=functools.partial(store.archive.check_room, store.config.min_free_mb))
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, syntaxes.STORAGE)
    return [
        (evt.EVT_C_STORE, on_c_store, [app.store, metrics]),
        (evt.EVT_ABORTED, _forget_partial_receive),
        (evt.EVT_CONN_CLOSE, _forget_partial_receive),
    ]


def on_start(app) -> None:
    """Finish what a crash interrupted before serving (rule 4 of docs/rules.md)."""
    done = app.store.recover()
    log.info("store: %d leftover %s of interrupted receives removed from incoming/, %d %s filed again, "
             "%d interrupted study %s finished", done.leftovers, "file" if done.leftovers == 1 else "files",
             len(done.refiled), "instance" if len(done.refiled) == 1 else "instances",
             len(done.settled), "move" if len(done.settled) == 1 else "moves")


def on_c_store(event, store: Store, metrics=None):
    """EVT_C_STORE: reconcile and file one instance; 0x0000 only once it is durable and indexed."""
    started = time.monotonic()
    calling = event.assoc.requestor.ae_title
    request = event.request
    sop = str(request.AffectedSOPInstanceUID or "-")
    accession = "-"
    try:
        not_received = tuning.failed_receive(request)
        if not_received is not None:  # refused before writing, or the write failed: no file is left
            raise _receive_error(not_received)
        received = store.receive(event.dataset_path, calling, session=_session(event.assoc),
                                 sop_class_uid=str(request.AffectedSOPClassUID or ""), sop_instance_uid=sop,
                                 written=tuning.received_digest(request))
        accession, outcome, status, code = received.accession_number or "-", received.summary(), st.SUCCESS, st.SUCCESS
    except Exception as exc:  # the one outer guard
        status = st.failure(st.C_STORE, exc, log, f"C-STORE of {sop} from {calling}")
        outcome, code = f"not stored: {exc}", status.Status
    took = time.monotonic() - started
    if metrics is not None:
        metrics.operation("C-STORE", code, took)
    log.log(logging.INFO if code == st.SUCCESS else logging.WARNING,
            "C-STORE from %s: instance %s, accession %s, %s, status 0x%04X, %.0f ms",
            calling, sop, accession, outcome, code, took * 1000,
            extra=logs.operation(event.assoc, "C-STORE", code, took))
    return status


def _receive_error(exc: BaseException) -> BaseException:
    """The core error for a dataset that could not be written as it arrived (status via st.failure)."""
    if isinstance(exc, GatekeeperError) or not isinstance(exc, OSError):
        return exc
    reason = exc.strerror or str(exc)
    if exc.errno in RESOURCE_ERRNOS:
        return OutOfResources(f"could not write the received dataset ({reason}); nothing was kept. "
                              "Free space on the storage volume (or memory, descriptors); the sender will retry.")
    return StorageFailure(f"could not write the received dataset ({reason}); nothing was kept. "
                          "Check the storage volume and the system log.")


def _session(assoc) -> Session:
    """The association's session (its order checks), made on its first C-STORE."""
    session = getattr(assoc, "gk_store_session", None)
    if session is None:
        session = assoc.gk_store_session = Session()
    return session


def _forget_partial_receive(event) -> None:
    """Delete the file of a dataset whose association ended before it was whole.

    The next start's recovery would remove it, but a long-running server should not collect
    them. Only the name is removed: the DUL thread may still hold the file open.
    """
    path = tuning.partial_receive_path(event.assoc)
    if path is not None:
        try:
            os.unlink(path)
        except OSError:
            pass
