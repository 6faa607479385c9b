"""Storage SCP (PS3.4 Annex B): C-STORE of every standard storage SOP class, reconciled and filed.

Thin handler: the dataset arrives as a file, one call into :class:`store.service.Store`
reconciles and files it (SPEC rules 3 and 4), the answer is a status. The one outer guard
logs anything unexpected and answers 0xC000; the handler never raises.

Contexts: the 170 storage SOP classes pynetdicom knows (``AllStoragePresentationContexts``)
with the transfer syntaxes of :data:`TRANSFER_SYNTAXES`. The limit of 128 presentation
contexts binds what one association *proposes*, not what an acceptor supports, so every
class is supported; each sender proposes the (at most 128) it needs. Private and unknown
SOP classes are rejected at association time (pynetdicom's ``UNRESTRICTED_STORAGE_SERVICE``
would accept them, but it is a process-wide switch that also routes unknown classes of
other services to storage; a sender that needs a private class gets a clear rejection).

Large instances are not held in memory: with ``_config.STORE_RECV_CHUNKED_DATASET``
pynetdicom writes each received dataset straight to a Part 10 file (128-byte preamble,
``DICM``, File Meta Information built from the request's SOP Class and Instance UIDs and
the context's transfer syntax, then the dataset bytes exactly as received) and hands its
path to the handler. pynetdicom creates that file with ``tempfile.NamedTemporaryFile``
in the system temporary folder; :func:`receive_into` makes it create the file in the
store's ``incoming/`` folder instead, so filing it is a rename on one file system, never
a copy. pynetdicom deletes its file after the handler returns; a filed one is gone by then.

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
import threading
import time
import weakref
from pathlib import Path

import pydicom.uid as ts
from pydicom.dataset import Dataset
from pynetdicom import AllStoragePresentationContexts, _config, dimse_messages, evt

from gateway import status as st
from gateway.app import App
from store import filing
from store.filing import ReceiveFailed, Session
from store.reconcile import hold_codes_from_warn_codes
from store.service import Store

log = logging.getLogger("gateway.store")

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

#: Status and Error Comment (0000,0902, LO: at most 64 characters) of each failure kind;
#: the log line has the whole story.
_FAILURES = {
    filing.OUT_OF_RESOURCES: (st.OUT_OF_RESOURCES, "Storage full or over quota; not stored, retry later"),
    filing.CANNOT_PROCESS: (st.CANNOT_UNDERSTAND, "Not stored: unreadable or not writable; see gatekeeper log"),
    filing.DOES_NOT_MATCH: (st.DATASET_DOES_NOT_MATCH_SOP_CLASS, "Dataset SOP Class/Instance UID differ from the request"),
}


def build_store(app: App) -> Store:
    """The store of ``app``'s settings, with its clock."""
    s = app.settings
    return Store(s.storage_root, policy=s.policy, hold_codes=hold_codes_from_warn_codes(s.warn_codes),
                 ae_title=s.ae_title, clock=app.now)


def add_to(ae, app: App) -> list:
    """Support every storage SOP class; return the C-STORE handler bound to the store."""
    store = build_store(app)
    _config.STORE_RECV_CHUNKED_DATASET = True
    receive_into(ae, store.archive.incoming)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    return [
        (evt.EVT_C_STORE, on_c_store, [store]),
        (evt.EVT_ABORTED, _forget_partial_receive),
        (evt.EVT_CONN_CLOSE, _forget_partial_receive),
    ]


def on_start(app: App) -> None:
    """Finish what a crash interrupted and clear ``incoming/`` before serving (SPEC rule 4)."""
    done = build_store(app).recover()
    log.info("store: %d leftover file(s) of interrupted receives removed from incoming/, %d instance(s) "
             "filed again, %d interrupted study move(s) finished", done.leftovers, len(done.refiled),
             len(done.settled))


def on_c_store(event, store: Store):
    """EVT_C_STORE: reconcile and file one instance; 0x0000 only once it is durable and indexed."""
    started = time.monotonic()
    calling = event.assoc.requestor.ae_title
    request = event.request
    sop = str(request.AffectedSOPInstanceUID or "-")
    accession, outcome = "-", ""
    try:
        received = store.receive(event.dataset_path, calling, session=_session(event.assoc),
                                 sop_class_uid=str(request.AffectedSOPClassUID or ""), sop_instance_uid=sop)
        accession, outcome, status = received.accession_number or "-", received.summary(), st.SUCCESS
    except ReceiveFailed as exc:
        outcome, status = f"not stored: {exc}", _failure(exc.kind)
    except Exception as exc:  # the one outer guard
        log.exception("C-STORE of %s from %s failed", sop, calling)
        outcome, status = f"not stored: {type(exc).__name__}: {exc}", _failure(filing.CANNOT_PROCESS)
    code = status.Status if isinstance(status, Dataset) else status
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


def _failure(kind: str) -> Dataset:
    reply = Dataset()
    reply.Status, reply.ErrorComment = _FAILURES[kind]
    return reply


# ---------------------------------------------------------------- where pynetdicom writes

#: The folder each serving AE's received datasets are written to.
_RECEIVE_DIRS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_original_named_temporary_file = dimse_messages.NamedTemporaryFile


def receive_into(ae, folder: Path) -> None:
    """Make pynetdicom write the datasets ``ae`` receives into ``folder``.

    pynetdicom 3.0 calls ``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")``
    (``dimse_messages.DIMSEMessage.decode_msg``) from the association's DUL thread, whose
    ``assoc.ae`` names the AE. The wrapper installed here adds ``dir=folder`` for the AEs
    registered with this function and leaves every other caller as it was.
    """
    _RECEIVE_DIRS[ae] = Path(folder)
    dimse_messages.NamedTemporaryFile = _named_temporary_file


def _named_temporary_file(*args, **kwargs):
    assoc = getattr(threading.current_thread(), "assoc", None)
    ae = getattr(assoc, "ae", None)
    folder = _RECEIVE_DIRS.get(ae) if ae is not None else None
    if folder is not None and "dir" not in kwargs:
        kwargs.update(dir=folder, prefix="rx-")
    return _original_named_temporary_file(*args, **kwargs)


def _forget_partial_receive(event) -> None:
    """Delete the file of a dataset whose association ended before it was whole.

    pynetdicom leaves it otherwise (it deletes only files it handed to the handler); the
    start-up clean-up would remove it, but a long-running server should not collect them.
    Only the name is removed: the DUL thread may still hold the file open.
    """
    message = getattr(getattr(event.assoc, "dimse", None), "message", None)
    path = getattr(message, "_data_set_path", None)
    if isinstance(path, Path):
        try:
            os.unlink(path)
        except OSError:
            pass
