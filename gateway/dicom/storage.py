"""Storage SCP (PS3.4 Annex B): C-STORE of every standard storage SOP class, reconciled and filed.

Thin handler: the dataset arrives as a file, one call into :class:`store.store.Store`
reconciles and files it (rules 3 and 4 of docs/rules.md), the answer is a status
(:func:`gateway.dicom.status.failure` maps a refusal). The one outer guard
logs anything unexpected and answers 0xC000; the handler never raises.

Contexts: the 170 storage SOP classes pynetdicom knows (``AllStoragePresentationContexts``)
with the transfer syntaxes of :data:`TRANSFER_SYNTAXES`. The limit of 128 presentation
contexts binds what one association *proposes*, not what an acceptor supports, so every
class is supported; each sender proposes the (at most 128) it needs. Private and unknown
SOP classes are rejected at association time (pynetdicom's ``UNRESTRICTED_STORAGE_SERVICE``
would accept them, but it is a process-wide switch that also routes unknown classes of
other services to storage; a sender that needs a private class gets a clear rejection).

Large instances are not held in memory: pynetdicom writes each received dataset straight
to a Part 10 file in the store's incoming folder (128-byte preamble, ``DICM``, File Meta
Information built from the request's SOP Class and Instance UIDs and the context's
transfer syntax, then the dataset bytes exactly as received) and hands its path to the
handler (:mod:`gateway.dicom.tuning`, changes 2 and 3). pynetdicom deletes its file
after the handler returns; a filed one is gone by then.

| outcome | status |
|---|---|
| stored and indexed (archived or held) | 0x0000 Success |
| disk full, quota, out of memory or descriptors | 0xA700 Refused: out of resources |
| dataset's SOP Class/Instance UID differ from the request's | 0xA900 Data set does not match SOP class |
| unreadable dataset, malformed UIDs, any other failure | 0xC000 Cannot understand |
"""

from __future__ import annotations

import logging
import os
import time

import pydicom.uid as ts
from pynetdicom import AllStoragePresentationContexts, evt

from gateway.dicom import status as st
from gateway.dicom import tuning
from store.receiving import Session
from store.store import Store

log = logging.getLogger("gateway.dicom.storage")

#: Transfer syntaxes accepted for every storage SOP class; the dataset is kept as received.
#: When a proposed context lists several, the first of these it lists is accepted:
#: uncompressed, then lossless, then lossy, so a sender is never asked to compress lossily.
TRANSFER_SYNTAXES = (
    ts.ExplicitVRLittleEndian, ts.ImplicitVRLittleEndian, ts.DeflatedExplicitVRLittleEndian,
    # lossless compression
    ts.JPEGLosslessSV1, ts.JPEGLossless, ts.JPEGLSLossless, ts.JPEG2000Lossless, ts.JPEG2000MCLossless,
    ts.HTJ2KLossless, ts.HTJ2KLosslessRPCL, ts.RLELossless,
    # lossy compression (accepted when the sender has nothing else)
    ts.JPEGBaseline8Bit, ts.JPEGExtended12Bit, ts.JPEGLSNearLossless, ts.JPEG2000, ts.JPEG2000MC, ts.HTJ2K,
    # video
    ts.MPEG2MPML, ts.MPEG2MPMLF, ts.MPEG2MPHL, ts.MPEG2MPHLF, ts.MPEG4HP41, ts.MPEG4HP41F,
    ts.MPEG4HP41BD, ts.MPEG4HP41BDF, ts.MPEG4HP422D, ts.MPEG4HP422DF, ts.MPEG4HP423D, ts.MPEG4HP423DF,
    ts.MPEG4HP42STEREO, ts.MPEG4HP42STEREOF, ts.HEVCMP51, ts.HEVCM10P51,
    # retired, still met on old equipment
    ts.ExplicitVRBigEndian,
)


def add_to(ae, app) -> list:
    """Support every storage SOP class; return the C-STORE handler bound to the store."""
    tuning.receive_into(ae, app.store.archive.incoming)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    return [
        (evt.EVT_C_STORE, on_c_store, [app.store]),
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


def on_c_store(event, store: Store):
    """EVT_C_STORE: reconcile and file one instance; 0x0000 only once it is durable and indexed."""
    started = time.monotonic()
    calling = event.assoc.requestor.ae_title
    request = event.request
    sop = str(request.AffectedSOPInstanceUID or "-")
    accession = "-"
    try:
        received = store.receive(event.dataset_path, calling, session=_session(event.assoc),
                                 sop_class_uid=str(request.AffectedSOPClassUID or ""), sop_instance_uid=sop)
        accession, outcome, status, code = received.accession_number or "-", received.summary(), st.SUCCESS, st.SUCCESS
    except Exception as exc:  # the one outer guard
        status = st.failure(st.C_STORE, exc, log, f"C-STORE of {sop} from {calling}")
        outcome, code = f"not stored: {exc}", status.Status
    log.log(logging.INFO if code == st.SUCCESS else logging.WARNING,
            "C-STORE from %s: instance %s, accession %s, %s, status 0x%04X, %.0f ms",
            calling, sop, accession, outcome, code, (time.monotonic() - started) * 1000)
    return status


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
