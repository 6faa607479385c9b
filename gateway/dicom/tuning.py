"""Where pynetdicom is tuned beyond its public API: every such change, and why, in one place.

Each change is checked by ``tests/test_tuning.py``, which fails if the pynetdicom
behaviour it relies on changes (an upgrade of pynetdicom must be looked at here first).

1. **No identifiers in pynetdicom's log.** By default pynetdicom formats every request and
   response identifier for its debug log: patient data in the log, and about a
   millisecond per worklist item. (``_config.LOG_REQUEST_IDENTIFIERS`` /
   ``LOG_RESPONSE_IDENTIFIERS``.)
2. **Received datasets go straight to a file.** With ``_config.STORE_RECV_CHUNKED_DATASET``
   pynetdicom writes each received C-STORE dataset to a Part 10 file as it arrives (so a
   512 MB instance never sits in memory) and hands the handler its path.
3. **That file is created in the store's own incoming folder.** pynetdicom creates it with
   ``tempfile.NamedTemporaryFile`` (imported into ``pynetdicom.dimse_messages``) in the
   system temporary folder; :func:`receive_into` makes it create the file in the store's
   incoming folder instead, so filing it is a rename on one file system, never a copy.
   Only the AEs registered here are redirected; every other caller is left as it was.
   The file comes wrapped (:class:`_ReceivedFile`) so that a dataset that cannot be written
   never takes the association down: pynetdicom writes from its DUL thread, where an
   exception kills the association (the sender sees an abort, the partial file stays).
   Before creating the file the store is asked for room (``check_room``); when it refuses,
   or the file cannot be created, or a write fails midway (ENOSPC, EIO), the partial file is
   closed and removed at once, the rest of the dataset is read off the wire and dropped, and
   the C-STORE handler learns why from :func:`failed_receive` and answers with a status.
   The wrapper also counts and hashes (SHA-256) every byte it writes, so that filing takes
   the file's size and checksum from :func:`received_digest` instead of reading it again.
4. **UIDs are not copied when contexts are.** pynetdicom deep-copies the supported
   presentation contexts for every association
   (``transport.RequestHandler._create_association``):
   with every storage class and its transfer syntaxes that is about 6,000 UIDs, each
   rebuilt and re-validated, some 90 ms before a console's query or a modality's first
   image. A UID is an immutable string, so a copy may share it (about 7 ms).
5. **A PDU is read within bounds of size and time.** pynetdicom's
   ``dul.DULServiceProvider._read_pdu_data`` believes the length in a PDU's header
   (``01 00 FF FF FF FF`` had it buffer up to 4 GB before reading any AE title) and reads
   the PDU from a blocking socket, where no timer runs: a peer sending one byte a second
   held its connection for ever. :func:`_read_pdu_data` replaces it (same events, same
   decoding) with two bounds:

   - *Size*: an A-ASSOCIATE PDU longer than :data:`MAX_ASSOCIATE_PDU`, or any other PDU
     longer than the maximum length this AE announces (``ae.maximum_pdu_size``, PS3.8 D.1;
     ``server.MAX_PDU_SIZE``), is refused once its header is read: the peer gets an A-ABORT
     (PS3.8 9.3.8: source 2, service provider; reason 6, invalid PDU parameter value) and the
     connection is closed at once (Evt17), rather than waiting in Sta13 for a peer that is
     still sending the rest.
   - *Time*: while the ARTIM timer runs (PS3.8 9.1.5: from the connection to a complete
     A-ASSOCIATE-RQ, Sta2; after our A-ASSOCIATE-RJ, A-ABORT or A-RELEASE-RP until the peer
     closes, Sta13; and on the acceptor's first read, Sta1, before the timer has started,
     its whole period) a read ends when the timer does, so ARTIM bounds the whole time a
     peer has to deliver its A-ASSOCIATE-RQ (the guard sets it to
     ``server.associate_timeout``). Otherwise each wait for bytes ends after the network
     timeout of silence, which pynetdicom's idle timer cannot enforce while its DUL thread
     is stuck in a read. A read that times out is a closed transport connection (Evt17).
     The socket's timeout bounds sends the same way: a peer that stops reading is dropped.
6. **A worklist response is encoded once per transfer syntax.** pynetdicom encodes every
   pending C-FIND identifier it is handed (``service_class.encode``, looked up in that
   module at each call), about half a millisecond per worklist item with pydicom. The
   worklist query returns the same response object for the same identifier and order
   version (:mod:`worklist.query`, never modified once built); :func:`encoded_once` registers
   such a response, and :func:`apply` puts :func:`_encode` in ``service_class.encode``,
   which answers a registered response with the bytes it encoded the first time under the
   same transfer syntax. Any other dataset is encoded by pynetdicom as before. The
   registered responses are kept in a bounded least-recently-used map
   (:data:`ENCODED_ENTRIES`, :data:`ENCODED_BYTES`).
7. **Pending C-FIND responses leave in few socket writes.** pynetdicom sends every
   response as its own DIMSE message (``dimse.DIMSEServiceProvider.send_msg``): it builds
   and encodes the command set with pydicom, makes a P-DATA primitive per fragment, runs
   the logging handlers of ``EVT_DIMSE_SENT`` and ``EVT_PDU_SENT`` (which format their
   lines even when nothing is logged), and queues each fragment to the DUL thread, which
   sends one P-DATA-TF PDU per turn of its loop, one socket write each: about a millisecond
   per worklist item. :func:`_send_msg` takes over the pending responses of C-FIND
   (0xFF00, 0xFF01): the command set is encoded once per query by pynetdicom (same message
   ID, SOP class and status, same bytes), the PDUs are framed exactly as pynetdicom frames
   them (the same fragments for the peer's maximum PDU length), and they are gathered into
   one :class:`_Batch`, a P-DATA primitive for the DUL thread, written to the socket at
   once when it holds :data:`BATCH_BYTES` or its first response has waited
   :data:`BATCH_WAIT` (seen when the next one is handed over). Every other message, the
   final status of a query above all (success, cancel, failure), sends the batch first and
   then goes through pynetdicom as before, so the order on the wire is unchanged. The
   batch passes the state machine as one P-DATA request (Evt9: DT-1 in Sta6, AR-7 in
   Sta8, refused in any other state like any P-DATA); :func:`apply` puts
   :func:`_send_p_data` in those two actions, which writes a batch with one
   ``AssociationSocket.send`` (its timeout and its Evt17 on failure, as for any PDU) and
   hands any other primitive to pynetdicom's own action. A C-CANCEL is read by the DUL
   thread meanwhile and seen by the handler before its next response, as before. While
   :data:`QUEUED_BATCHES` are waiting to be written the handler waits, so the answer to a
   console that stops reading is not built whole in memory (pynetdicom queues without
   bound). Only
   when nothing watches the messages: an association with a handler of its own on
   ``EVT_DIMSE_SENT``, ``EVT_PDU_SENT`` or ``EVT_DATA_SENT``, or with pynetdicom's logger
   at DEBUG, is served by pynetdicom as before.
8. **The reactors wait for work instead of polling.** Each association has two threads, and
   pynetdicom runs both as polling loops: the DUL thread (``DULServiceProvider.run_reactor``)
   sleeps a millisecond whenever a turn found nothing to do, then looks at its queues and
   polls the socket; the association thread (``Association._run_reactor``) sleeps a
   millisecond every turn before looking for a message. An idle association thus costs
   some 2,000 wake-ups a second (8% of a core), every C-STORE waits up to a millisecond at
   each hand-over between the two threads, and with several associations the wake-ups
   fight the handlers for the interpreter lock. :func:`_dul_reactor` and
   :func:`_association_reactor` are the same loops, step for step, with the sleeps replaced
   by waits that end as soon as there is something to do: the queues between the threads
   (``to_provider_queue``, ``event_queue``, ``to_user_queue``, the DIMSE ``msg_queue``) are
   made in the constructors as :class:`_WakingQueue`, which wakes its reader on every put;
   the DUL thread waits in ``select`` on the peer's socket and a socket pair of its own
   (:func:`_wait_for_dul_work`; an SSL socket's buffered bytes are looked at first), the
   association thread on an event. The timers bound the waits (ARTIM for the DUL thread, the
   network idle timer for the association thread), so both still expire on time, and
   :data:`IDLE_WAIT` caps every wait as a safety net. ``stop_dul``, ``kill_dul`` and
   ``Association.kill`` wake the thread they end. A caller that pauses the association's
   reactor to exchange messages itself (``send_c_store`` and the like, used by the
   gatekeeper's own SCUs) finds it paused while it waits; :func:`_pass_checkpoint` also
   closes a gap of pynetdicom's loop in which such a caller could have its response taken,
   and a request served on another thread (an N-EVENT-REPORT) wakes it after
   (:func:`_serve_request`).
9. **A received instance's File Meta and its C-STORE response are encoded without pydicom.**
   For each C-STORE request pynetdicom builds a File Meta dataset with pydicom and writes it
   before the received dataset (``dimse_messages.create_file_meta`` and
   ``write_file_meta_info``, used only there), and builds and encodes the response's command
   set with pydicom (``send_msg``): together about 0.6 ms per instance. :func:`apply` puts
   :func:`_create_file_meta` and :func:`_write_file_meta_info` in ``dimse_messages``, which
   write the same bytes with ``struct`` (:func:`file_meta_bytes`); :func:`_send_msg` encodes
   a C-STORE response that carries a status and the affected UIDs only (no Error Comment,
   no Offending Element) as the same bytes pynetdicom would (:func:`_store_rsp_pdus`) and
   writes it as one PDU through the batch path of change 7. Any value that is not a plain
   UID or a 16-bit number, any other response, and any association watched as in change 7
   are left to pynetdicom.
10. **pynetdicom's logging handlers are unbound where nothing they log is kept.** Every
    association binds four handlers (``_config.LOG_HANDLER_LEVEL = "standard"``:
    ``EVT_DIMSE_RECV``, ``EVT_DIMSE_SENT``, ``EVT_PDU_RECV``, ``EVT_PDU_SENT``) that build
    their lines, a SOP class's name looked up, every PDU's items listed, before the logger
    drops them: the server keeps pynetdicom's logger at WARNING unless ``log_level`` is
    DEBUG, and those handlers log at INFO and DEBUG. About half a millisecond per received
    instance. :func:`quiet_logging`, an ``EVT_CONN_OPEN`` handler of the server, unbinds
    them from each association it accepts while their logger is above INFO; at INFO or
    DEBUG they stay, and log as before.
11. **The middle of a received dataset goes from the socket to its file.** pynetdicom takes
    every P-DATA-TF PDU through the same steps: the bytes copied three times, the PDU
    decoded into items, ``EVT_DATA_RECV`` and ``EVT_PDU_RECV`` triggered, an event queued
    for the state machine (Evt10, DT-2 in Sta6), a P-DATA primitive made and handed to the
    DIMSE provider (``decode_msg``), which writes each data fragment after its control
    header to the received file and flushes it. An instance of 0.5 MB from DCMTK arrives in
    four or five such PDUs. :func:`_read_pdu_data` reads each PDU into one buffer; one made
    only of middle fragments of a data set (control header ``xxxxxx00``, PS3.8 E.2) that a
    C-STORE request of a serving AE (change 3) is receiving, in Sta6 with nothing queued
    ahead of it for the state machine, and on an association where nothing is bound to
    those two events, is written by :func:`_write_through` to that file with the same
    writes and flush, and the state machine is left where DT-2 leaves it (Sta6; the idle
    timer restarted by the reactor as for any PDU). Any other PDU, one with a command
    fragment (the file is made when the command set is whole) or the last data fragment (it
    completes the message) above all, and anything malformed, goes through pynetdicom as
    before, whole.
12. **A C-STORE request's command set is decoded without pydicom.** pynetdicom decodes every
    command set with pydicom (``dimse_messages.decode``, used only there) and copies its
    elements into the primitive one by one (``message_to_primitive``), each UID validated
    by pydicom on the way in and again by the primitive: about 0.4 ms per instance.
    :func:`apply` puts :func:`_decode` in ``dimse_messages``, which decodes a command set of
    exactly a C-STORE request's seven elements (:data:`_STORE_RQ_ELEMENTS`, in order, a
    data set announced, each value of its VR's length, every UID plain, PS3.5 9.1) with
    ``struct`` (:func:`store_request_values`) into a :class:`_StoreCommand`, which gives the
    same values as attributes and answers anything else by pydicom's decoding of the same
    bytes; and :func:`_store_rq_to_primitive` in ``C_STORE_RQ.message_to_primitive``,
    which makes the same C_STORE primitive from it, the UIDs set as they were checked. Any
    other command set, a C-STORE of a C-MOVE (Move Originator) above all, is decoded by
    pydicom and converted by pynetdicom as before.
13. **A UID checked once is not checked again.** The C-STORE response pynetdicom makes
    (``StorageServiceClass.SCP``) is given the request's Affected SOP Class and Instance
    UIDs, and the primitive's setters (``C_STORE.AffectedSOPClassUID`` and
    ``_AffectedSOPInstanceUID``, through pynetdicom's ``set_uid``) copy and validate each
    again, twice (pydicom's UID, then pynetdicom's validator): about 0.1 ms per instance.
    The UIDs change 12 decodes are :class:`_PlainUID`, a UID checked as PS3.5 9.1 writes it;
    :func:`apply` puts setters in ``C_STORE`` (:func:`_set_once`) that keep such a UID as it
    is and hand any other value (a string, a UID made elsewhere, None) to pynetdicom's.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import queue
import re
from select import select
import socket
import ssl
import struct
import threading
import time
import weakref
from collections import OrderedDict
from pathlib import Path

from pydicom import config as pydicom_config
from pydicom.uid import UID
from io import BytesIO

from pynetdicom import (PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config, _handlers,
                        dimse_messages, dsutils, evt, fsm, service_class)
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import _MESSAGE_TYPES, C_FIND_RSP, C_STORE_RQ
from pynetdicom.dimse_primitives import C_FIND, C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA

log = logging.getLogger("gateway.dicom.tuning")

#: The folder each serving AE's received datasets are written to.
_RECEIVE_DIRS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_original_named_temporary_file = dimse_messages.NamedTemporaryFile


#: pynetdicom's logging handlers, bound to every association (``_config.LOG_HANDLER_LEVEL``).
_STANDARD_LOGGING = ((evt.EVT_DIMSE_RECV, _handlers.standard_dimse_recv_handler),
                     (evt.EVT_DIMSE_SENT, _handlers.standard_dimse_sent_handler),
                     (evt.EVT_PDU_RECV, _handlers.standard_pdu_recv_handler),
                     (evt.EVT_PDU_SENT, _handlers.standard_pdu_sent_handler))
#: The logger those handlers write to.
_handlers_log = logging.getLogger(_handlers.__name__)


def quiet_logging(event) -> None:
    """EVT_CONN_OPEN (change 10): unbind pynetdicom's logging handlers from an association
    whose log lines would be dropped (its logger above INFO)."""
    if _handlers_log.isEnabledFor(logging.INFO):
        return
    for name, handler in _STANDARD_LOGGING:
        event.assoc.unbind(name, handler)


def no_delay(event) -> None:
    """EVT_CONN_OPEN: turn Nagle's algorithm off; pynetdicom leaves it on, which costs ~40 ms
    per small exchange (every C-STORE response, every C-FIND answer)."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def apply() -> None:
    """Changes 1, 2, 4 to 9, 12 and 13, for the whole process (called once when the server is built;
    change 10 is an EVT_CONN_OPEN handler of the server, 3 is :func:`receive_into`)."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.STORE_RECV_CHUNKED_DATASET = True
    copy._deepcopy_dispatch.setdefault(UID, _share)
    DULServiceProvider._read_pdu_data = _read_pdu_data
    service_class.encode = _encode
    DIMSEServiceProvider.send_msg = _send_msg
    service_class.ServiceClass._c_find_scp = _c_find_scp
    for name in _P_DATA_ACTIONS:
        description, _, state = fsm.ACTIONS[name]
        fsm.ACTIONS[name] = (description, _send_p_data, state)
    dimse_messages.create_file_meta = _create_file_meta
    dimse_messages.write_file_meta_info = _write_file_meta_info
    dimse_messages.decode = _decode
    C_STORE_RQ.message_to_primitive = _store_rq_to_primitive
    for name, attribute in _ONCE_CHECKED:
        setattr(C_STORE, name, _set_once(_original_uid_properties[name], attribute))
    DULServiceProvider.__init__ = _dul_init
    DIMSEServiceProvider.__init__ = _dimse_init
    DULServiceProvider.run_reactor = _dul_reactor
    DULServiceProvider.stop_dul = _stop_dul
    DULServiceProvider.kill_dul = _kill_dul
    Association._run_reactor = _association_reactor
    Association.kill = _kill
    Association._serve_request = _serve_request


#: Responses whose encodings are kept (change 6), and the bytes those hold at most.
ENCODED_ENTRIES = 8192
ENCODED_BYTES = 32 * 1024 * 1024
_original_encode = dsutils.encode


class _Encodings:
    """id(dataset) -> (dataset, {syntax: bytes}), least recently used first. The entry holds
    the dataset, so its id cannot be reused by another while the entry lives."""

    def __init__(self) -> None:
        self.entries: OrderedDict = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    def register(self, ds) -> None:
        with self.lock:
            found = self.entries.get(id(ds))
            if found is not None and found[0] is ds:
                self.entries.move_to_end(id(ds))
                return
            self.entries[id(ds)] = (ds, {})
            while len(self.entries) > ENCODED_ENTRIES:
                self.bytes -= sum(len(b) for b in self.entries.popitem(last=False)[1][1].values())

    def encode(self, ds, implicit: bool, little: bool, deflated: bool = False):
        key = (implicit, little, deflated)
        with self.lock:
            found = self.entries.get(id(ds))
            if found is None or found[0] is not ds:
                found = None
            elif key in found[1]:
                return found[1][key]
        encoded = _original_encode(ds, implicit, little, deflated)
        if found is None or encoded is None:
            return encoded
        with self.lock:
            if self.entries.get(id(ds)) is found and key not in found[1]:
                found[1][key] = encoded
                self.bytes += len(encoded)
                while self.entries and (len(self.entries) > ENCODED_ENTRIES or self.bytes > ENCODED_BYTES):
                    self.bytes -= sum(len(b) for b in self.entries.popitem(last=False)[1][1].values())
        return encoded


_ENCODINGS = _Encodings()


def encoded_once(ds):
    """Register ``ds`` (a response that is never modified) to be encoded once per transfer syntax; returns it."""
    _ENCODINGS.register(ds)
    return ds


def _encode(ds, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False):
    """``service_class.encode`` (change 6): the bytes of a registered response, else pynetdicom's encode."""
    return _ENCODINGS.encode(ds, is_implicit_vr, is_little_endian, deflated)


def _share(uid: UID, memo: dict) -> UID:
    return uid


def receive_into(ae, folder: Path, check_room=None) -> None:
    """Change 3: make pynetdicom write the datasets ``ae`` receives into ``folder``.

    pynetdicom 3.0 calls ``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")``
    (``dimse_messages.DIMSEMessage.decode_msg``) from the association's DUL thread, whose
    ``assoc.ae`` names the AE. The wrapper installed here adds ``dir=folder`` for the AEs
    registered with this function, and hands pynetdicom a :class:`_ReceivedFile`.
    ``check_room``, when given, is called before each file is created; whatever it raises
    refuses that dataset without writing it (see :func:`failed_receive`).
    """
    _RECEIVE_DIRS[ae] = Path(folder)
    _ROOM_CHECKS[ae] = check_room
    dimse_messages.NamedTemporaryFile = _named_temporary_file


def _named_temporary_file(*args, **kwargs):
    assoc = getattr(threading.current_thread(), "assoc", None)
    ae = getattr(assoc, "ae", None)
    folder = _RECEIVE_DIRS.get(ae) if ae is not None else None
    if folder is None or "dir" in kwargs:
        return _original_named_temporary_file(*args, **kwargs)
    return _open_received_file(folder, _ROOM_CHECKS.get(ae), args, {**kwargs, "dir": folder, "prefix": "rx-"})


def partial_receive_path(assoc) -> Path | None:
    """The file of a dataset the association was receiving when it ended, if any.

    pynetdicom keeps it on ``assoc.dimse.message._data_set_path`` and deletes only files it
    handed to the handler.
    """
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    path = getattr(message, "_data_set_path", None)
    return path if isinstance(path, Path) else None


# -- change 3: a received dataset that cannot be written ------------------------------------

#: The room check of each serving AE (:func:`receive_into`), called before each file is made.
_ROOM_CHECKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def failed_receive(request) -> BaseException | None:
    """Why the dataset of this C-STORE request was not written whole, or None when it was.

    Set when the room check refused it before the first byte, when its file could not be
    created, or when a write failed midway; in each case no file is left. The C-STORE
    handler answers with a status for it instead of filing anything.
    """
    received = getattr(request, "_dataset_file", None)  # pynetdicom: message_to_primitive copies it
    return received.error if isinstance(received, _ReceivedFile) else None


def received_digest(request) -> tuple[int, str] | None:
    """The size and SHA-256 of the file this C-STORE request's dataset was written to, as
    computed while it was written; None when it was not written whole (:func:`failed_receive`)
    or not by this module."""
    received = getattr(request, "_dataset_file", None)
    if not isinstance(received, _ReceivedFile) or received.error is not None:
        return None
    return received.size, received._digest.hexdigest()


def _open_received_file(folder: Path, check_room, args, kwargs) -> "_ReceivedFile":
    """The file for one received dataset, or a sink that drops it; never raises (DUL thread)."""
    try:
        if check_room is not None:
            check_room()
        return _ReceivedFile(_original_named_temporary_file(*args, **kwargs))
    except Exception as exc:  # a raise here would kill the association's DUL thread
        return _ReceivedFile(None, error=exc, folder=folder)


class _ReceivedFile:
    """What pynetdicom writes one received dataset into: its file, until a write fails.

    pynetdicom's ``decode_msg`` uses ``write``, ``file.flush()`` and ``name`` (and
    pydicom's ``write_file_meta_info`` only ``write``); its storage service calls ``close()``
    and unlinks ``name`` after the handler. The first failing write or flush closes and
    removes the file and keeps the error; from then on (or from the start, for a refused
    dataset, whose name never exists) the bytes are dropped, so the association reads the
    rest of the dataset and stays usable.

    Every byte written is also counted and hashed (SHA-256) as it goes, so that the file need
    not be read again for the index (:func:`received_digest`). The writes are the file's
    whole content: pynetdicom writes the preamble, the File Meta and then the dataset, in
    order, through this object alone.
    """

    def __init__(self, file, *, error: BaseException | None = None, folder: Path | None = None) -> None:
        self._file = file
        self.error = error
        self._digest = hashlib.sha256()
        self.size = 0
        if file is not None:
            self.name = file.name
        else:  # a name that is never created: pynetdicom's unlink of it after the handler is a no-op
            self.name = str(Path(folder) / f"rx-refused-{threading.get_ident()}-{id(self)}.dcm")

    @property
    def file(self) -> "_ReceivedFile":  # pynetdicom flushes through ``.file.flush()``
        return self

    def write(self, data) -> int:
        if self._file is not None:
            try:
                written = self._file.write(data)
            except OSError as exc:
                self._fail(exc)
            else:
                self._digest.update(data)
                self.size += len(data)
                return written
        return len(data)

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError:
                pass  # after the handler: every byte was flushed before it ran

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        self.close()
        try:
            Path(self.name).unlink()
        except OSError:
            pass  # gone already, or left to the next start's clean-up of incoming/


# -- change 5: a PDU is read within bounds of size and time ---------------------------------

#: Longest A-ASSOCIATE-RQ/-AC/-RJ accepted (its PDU-length field, bytes). An A-ASSOCIATE-RQ
#: proposing every storage class (120 contexts) with 4 transfer syntaxes each is about 16 KB,
#: with 8 each about 29 KB; 64 KiB leaves room for that and a user identity item besides.
MAX_ASSOCIATE_PDU = 64 * 1024
_ASSOCIATE_PDUS = (0x01, 0x02, 0x03)
_KNOWN_PDUS = range(0x01, 0x08)
#: States in which the ARTIM timer bounds a read (Sta1: the acceptor's first read, before AE-5).
_ARTIM_STATES = ("Sta1", "Sta2", "Sta13")
_original_read_pdu_data = DULServiceProvider._read_pdu_data


def _read_pdu_data(dul: DULServiceProvider) -> None:
    """Change 5: read one PDU, or put the event that says why not (runs in the DUL thread)."""
    deadline = _read_deadline(dul)
    try:
        header = _recv(dul, 6, deadline)
        pdu_type, _, length = struct.unpack(">BBL", header)
    except (OSError, struct.error) as exc:  # closed, timed out or short
        _closed(dul, exc)
        return
    if pdu_type not in _KNOWN_PDUS:
        dul.event_queue.put("Evt19")  # unrecognised PDU
        return
    limit = MAX_ASSOCIATE_PDU if pdu_type in _ASSOCIATE_PDUS else dul.assoc.ae.maximum_pdu_size
    if limit and length > limit:
        _refuse(dul, pdu_type, length, limit)
        return
    try:
        body = _recv(dul, length, deadline)
    except OSError as exc:
        _closed(dul, exc)
        return
    if len(body) != length:  # the peer closed the connection mid-PDU
        _closed(dul)
        return
    if pdu_type == 0x04 and _write_through(dul, body):
        return
    try:
        pdu, event = dul._decode_pdu(bytearray(header + body))
    except Exception:
        log.warning("undecodable PDU (type 0x%02X, %d bytes) from %s", pdu_type, length, _peer(dul))
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


def _write_through(dul: DULServiceProvider, body: bytearray) -> bool:
    """Change 11 (runs in the DUL thread): write a P-DATA-TF PDU made only of middle fragments
    of a C-STORE request's data set straight to its file; False (nothing done) for any other PDU."""
    if dul.state_machine.current_state != "Sta6" or not dul.event_queue.empty() or not dul._recv_pdu.empty():
        return False  # the state machine has work before this PDU: it goes the usual way, in order
    message = dul.assoc.dimse.message
    received = getattr(message, "_data_set_file", None)
    if not isinstance(message, C_STORE_RQ) or not isinstance(received, _ReceivedFile):
        return False
    assoc = dul.assoc
    if assoc.get_handlers(evt.EVT_PDU_RECV) or assoc.get_handlers(evt.EVT_DATA_RECV):
        return False  # something watches each PDU
    fragments = []
    offset, end = 0, len(body)
    while offset < end:  # PDV items (PS3.8 9.3.5.1): length, context ID, control header, data
        if end - offset < 6:
            return False
        (length,) = struct.unpack_from(">L", body, offset)
        if length < 2 or offset + 4 + length > end or body[offset + 5] & 0x03:
            return False  # malformed, command information, or the last fragment: pynetdicom's
        fragments.append((offset + 6, offset + 4 + length))
        offset += 4 + length
    if not fragments:
        return False
    view = memoryview(body)
    for start, stop in fragments:
        received.write(view[start:stop])
    received.flush()
    return True


def _closed(dul: DULServiceProvider, exc: BaseException | None = None) -> None:
    """Evt17, transport connection closed: by the peer, or by us when a bound ran out."""
    if isinstance(exc, TimeoutError):
        log.warning("dropped %s: %s", _peer(dul), exc)
    dul.event_queue.put("Evt17")


def _read_deadline(dul: DULServiceProvider) -> float | None:
    """When this read must end (``time.monotonic()``): the ARTIM timer's end, while it runs."""
    artim = dul.artim_timer
    if artim.timeout is None or dul.state_machine.current_state not in _ARTIM_STATES:
        return None
    return time.monotonic() + artim.remaining  # not started yet (Sta1): its whole period


def _recv(dul: DULServiceProvider, count: int, deadline: float | None) -> bytearray:
    """Up to ``count`` bytes (fewer when the peer closes); TimeoutError past the bounds."""
    sock = dul.socket.socket if dul.socket is not None else None
    if sock is None:
        raise ConnectionError("socket closed")
    silence = dul.network_timeout
    data = bytearray(count)
    view = memoryview(data)
    got = 0
    try:
        while got < count:
            timeout, why = silence, f"nothing received for {silence}s"
            if deadline is not None and (silence is None or deadline - time.monotonic() < silence):
                timeout = max(deadline - time.monotonic(), 0.0)
                why = f"no complete PDU within the ARTIM timer ({dul.artim_timer.timeout}s)"
            if timeout == 0:
                raise TimeoutError(why)
            if sock.gettimeout() != timeout:  # each change is a system call
                sock.settimeout(timeout)
            try:
                received = sock.recv_into(view[got:], count - got)
            except TimeoutError:
                raise TimeoutError(why) from None
            if not received:
                break
            got += received
    finally:
        view.release()
        if sock.gettimeout() != silence:
            sock.settimeout(silence)  # what sends wait at most, too
    if got < count:
        del data[got:]
    return data


def _refuse(dul: DULServiceProvider, pdu_type: int, length: int, limit: int) -> None:
    """A-ABORT (service provider, invalid PDU parameter value) and the connection closed."""
    log.warning("refused a PDU of type 0x%02X claiming %d bytes (at most %d) from %s: A-ABORT",
                pdu_type, length, limit, _peer(dul))
    abort = A_ABORT_RQ()
    abort.source = 0x02
    abort.reason_diagnostic = 0x06
    dul._send(abort)
    dul.event_queue.put("Evt17")  # AA-5 (Sta2) or AA-4 (A-P-ABORT to the association): closed


def _peer(dul: DULServiceProvider) -> str:
    assoc = dul.assoc
    remote = assoc.acceptor if assoc.is_requestor else assoc.requestor
    return f"{remote.address}:{remote.port}" if remote.address_info else "the peer"


# -- change 7: pending C-FIND responses leave in few socket writes ---------------------------

#: A batch of pending responses is written once it holds this many bytes ...
BATCH_BYTES = 64 * 1024
#: ... or once its first response has waited this long (seconds; looked at when the next
#: response is handed over: a slow query sends what it has every so often).
BATCH_WAIT = 0.05
#: Batches queued to the DUL thread at most (:func:`_flush`).
QUEUED_BATCHES = 8
#: The pending statuses of C-FIND (PS3.4 C.4.1.1.4): the responses that carry a match.
_PENDING = (0xFF00, 0xFF01)
#: The state machine's actions that send a P-DATA request (Sta6, Sta8), and what they return.
_P_DATA_ACTIONS = {"DT-1": "Sta6", "AR-7": "Sta8"}
_original_actions = {name: fsm.ACTIONS[name][1] for name in _P_DATA_ACTIONS}
_original_send_msg = DIMSEServiceProvider.send_msg
_original_c_find_scp = service_class.ServiceClass._c_find_scp
#: The primitive's attributes a C-FIND-RSP's command set is made of (pynetdicom fills the rest).
_FIND_RSP_KEYS = tuple(e.keyword for e in C_FIND_RSP().command_set
                       if e.keyword not in ("CommandGroupLength", "CommandField", "CommandDataSetType"))
#: pynetdicom's own logging handlers: skipping them changes nothing while its logger is above DEBUG.
_STANDARD = {evt.EVT_DIMSE_SENT: _handlers.standard_dimse_sent_handler,
             evt.EVT_PDU_SENT: _handlers.standard_pdu_sent_handler}
_pynetdicom_log = logging.getLogger("pynetdicom")


class _Batch(P_DATA):
    """P-DATA-TF PDUs already encoded, written with one socket write by :func:`_send_p_data`.

    A P_DATA, so the DUL takes it as a P-DATA request (Evt9) like any other.
    """

    def __init__(self, service: str = "C-FIND") -> None:
        super().__init__()
        self.service = service
        self.parts: list[bytes] = []
        self.size = 0
        self.responses = 0
        self.since = 0.0

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


def _send_msg(dimse: DIMSEServiceProvider, primitive, context_id: int) -> None:
    """``DIMSEServiceProvider.send_msg`` (changes 7 and 9): a pending C-FIND response joins the
    batch; a C-STORE response is encoded here and written at once."""
    pdus = _store_rsp_pdus(dimse, primitive, context_id)
    if pdus is not None:
        _flush(dimse)
        response = _Batch("C-STORE")
        response.parts, response.size, response.responses = pdus, sum(len(p) for p in pdus), 1
        dimse.dul.send_pdu(response)
        return
    pdus = _pending_find_pdus(dimse, primitive, context_id)
    if pdus is None:
        _flush(dimse)
        _original_send_msg(dimse, primitive, context_id)
        return
    batch = dimse.__dict__.get("_gk_batch")
    now = time.monotonic()
    if batch is None:
        batch = dimse._gk_batch = _Batch()
        batch.since = now
    batch.parts.extend(pdus)
    batch.size += sum(len(p) for p in pdus)
    batch.responses += 1
    if batch.size >= BATCH_BYTES or now - batch.since >= BATCH_WAIT:
        _flush(dimse)


def _flush(dimse: DIMSEServiceProvider) -> None:
    """Hand the batch, if any, to the DUL thread (behind whatever is queued already).

    While :data:`QUEUED_BATCHES` wait to be written, the handler waits: for a console that
    reads slowly or not at all, the answer is not built whole in memory. The wait ends when
    the DUL thread has written one, or has dropped the connection (its socket timeout), or
    has stopped.
    """
    batch = dimse.__dict__.pop("_gk_batch", None)
    if batch is None:
        return
    dul = dimse.dul
    while dul.to_provider_queue.qsize() >= QUEUED_BATCHES and dimse.assoc.is_established and dul.is_alive():
        time.sleep(0.001)
    dul.send_pdu(batch)


def _c_find_scp(self, req, context) -> None:
    """``ServiceClass._c_find_scp`` (change 7): pynetdicom's, with no batch left behind.

    It ends with a final status (which sends the batch first), or, when the association
    is no longer established (aborted, released by a handler), without one: then what is
    left is dropped, as the peer is gone.
    """
    try:
        _original_c_find_scp(self, req, context)
    finally:
        dimse = self.dimse
        if dimse.__dict__.get("_gk_batch") is not None:
            if self.assoc.is_established:
                _flush(dimse)
            else:
                dimse.__dict__.pop("_gk_batch", None)


def _pending_find_pdus(dimse: DIMSEServiceProvider, primitive, context_id: int) -> list[bytes] | None:
    """The P-DATA-TF PDUs of a pending C-FIND response, as pynetdicom would send them; None
    for any other message, or when something watches what is sent."""
    if (type(primitive) is not C_FIND or primitive.MessageIDBeingRespondedTo is None
            or primitive.Status not in _PENDING or not isinstance(primitive.Identifier, BytesIO)
            or getattr(primitive, "_dataset_path", None) is not None or _watched(dimse.assoc)):
        return None
    try:
        key = (context_id, dimse.maximum_pdu_size, *(getattr(primitive, k) for k in _FIND_RSP_KEYS))
        commands = dimse.__dict__.setdefault("_gk_find_commands", {})
        command = commands.get(key)
    except TypeError:  # an unhashable value (a list of offending elements): pynetdicom sends it
        return None
    if command is None:
        message = C_FIND_RSP()
        message.primitive_to_message(primitive)
        if len(commands) >= 8:  # one query at a time: the entries of past queries are of no use
            commands.clear()
        command = commands[key] = _frame(context_id, 0x01, dsutils.encode(message.command_set, True, True),
                                         dimse.maximum_pdu_size)
    dataset = primitive.Identifier.getvalue()
    if not dataset:
        return None  # pynetdicom sends no data set then: leave that to it
    return [*command, *_frame(context_id, 0x00, dataset, dimse.maximum_pdu_size)]


def _frame(context_id: int, kind: int, data: bytes, max_pdu: int) -> list[bytes]:
    """``data`` as P-DATA-TF PDUs of one PDV each, fragmented as pynetdicom does
    (``DIMSEMessage.encode_msg``: fragments of ``max_pdu - 6`` bytes, whole when 0).

    ``kind`` is the message control header's command bit (PS3.8 E.2); the last fragment
    also has bit 1 set.
    """
    step = len(data) if max_pdu == 0 else max_pdu - 6
    pdus = []
    for offset in range(0, len(data), step):
        fragment = data[offset:offset + step]
        last = 0x02 if offset + step >= len(data) else 0x00
        pdus.append(struct.pack(">BBLLBB", 0x04, 0x00, len(fragment) + 6, len(fragment) + 2, context_id, kind | last))
        pdus.append(fragment)
    return pdus


def _watched(assoc) -> bool:
    """Whether something other than pynetdicom's silent logging would see the messages sent."""
    if assoc.get_handlers(evt.EVT_DATA_SENT):
        return True
    for event, standard in _STANDARD.items():
        if any(handler is not standard for handler, _ in assoc.get_handlers(event)):
            return True
    return _pynetdicom_log.isEnabledFor(logging.DEBUG)


def _send_p_data(dul: DULServiceProvider) -> str:
    """DT-1 (Sta6) and AR-7 (Sta8) with change 7: a :class:`_Batch` in one socket write."""
    primitive = dul.to_provider_queue.queue[0]
    action = fsm.TRANSITION_TABLE[("Evt9", dul.state_machine.current_state)]
    if not isinstance(primitive, _Batch):
        return _original_actions[action](dul)
    dul.to_provider_queue.get(False)
    if dul.socket is not None:
        dul.socket.send(primitive.data)  # Evt17 when the peer is gone or stopped reading
    else:
        log.warning("%d %s response(s) not sent: the connection is closed", primitive.responses, primitive.service)
    return _P_DATA_ACTIONS[action]


# -- change 8: the reactors wait for work instead of polling ---------------------------------

#: The longest either reactor waits with nothing to do before it looks again (seconds). Only
#: a safety net: everything a reactor waits for wakes it at once (:func:`_wake_dul`,
#: :func:`_wake_association`), and its timers (ARTIM, network idle) shorten the wait.
IDLE_WAIT = 0.5
_original_dul_init = DULServiceProvider.__init__
_original_dimse_init = DIMSEServiceProvider.__init__
_original_dul_reactor = DULServiceProvider.run_reactor
_original_stop_dul = DULServiceProvider.stop_dul
_original_kill_dul = DULServiceProvider.kill_dul
_original_association_reactor = Association._run_reactor
_original_kill = Association.kill
_original_serve_request = Association._serve_request
#: The loggers of the loops replaced, so that their lines read as before.
_association_log = logging.getLogger("pynetdicom.association")
_dul_log = logging.getLogger("pynetdicom.dul")


class _WakingQueue(queue.Queue):
    """A queue that calls ``wake`` after every item put, so that its reader need not poll."""

    def __init__(self, wake) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


def _dul_init(dul: DULServiceProvider, assoc) -> None:
    """``DULServiceProvider.__init__`` (change 8): its queues wake their readers.

    The DUL thread reads ``to_provider_queue`` (what the association sends) and
    ``event_queue``, and waits on a socket pair besides the peer's socket; the
    association thread reads ``to_user_queue`` (A-RELEASE, A-ABORT from the peer).
    """
    _original_dul_init(dul, assoc)
    dul._gk_wake_r, dul._gk_wake_w = socket.socketpair()
    dul._gk_wake_r.setblocking(False)
    dul._gk_wake_w.setblocking(False)
    dul.event_queue = _WakingQueue(lambda: _wake_dul(dul))
    dul.to_provider_queue = _WakingQueue(lambda: _wake_dul(dul))
    dul.to_user_queue = _WakingQueue(lambda: _wake_association(assoc))


def _dimse_init(dimse: DIMSEServiceProvider, assoc) -> None:
    """``DIMSEServiceProvider.__init__`` (change 8): a complete message wakes the association."""
    _original_dimse_init(dimse, assoc)
    dimse.msg_queue = _WakingQueue(lambda: _wake_association(assoc))


def _wake_dul(dul: DULServiceProvider) -> None:
    """Wake the DUL thread from its wait. Its own puts need not: it looks again before waiting."""
    if threading.get_ident() == dul.ident:
        return
    try:
        dul._gk_wake_w.send(b"\0")
    except OSError:  # full (it is awake already) or closed (it has ended)
        pass


def _association_wake(assoc) -> threading.Event:
    return assoc.__dict__.setdefault("_gk_wake", threading.Event())


def _wake_association(assoc) -> None:
    _association_wake(assoc).set()


def _dul_reactor(self: DULServiceProvider) -> None:
    """``DULServiceProvider.run_reactor`` (change 8): pynetdicom's loop, one step at a time as
    before, except that where pynetdicom sleeps a millisecond and looks again, this waits for
    the peer's socket or the socket pair (:func:`_wait_for_dul_work`)."""
    self._idle_timer.start()
    idle = False
    try:
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if idle:
                _wait_for_dul_work(self)
            if self._kill_thread:
                break
            # ARTIM first, so that its event is ahead of any other this turn
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                # either send a primitive of the local user or read a PDU, one per turn
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:  # as pynetdicom: an A-ABORT past the state machine
                _abort_from_reactor(self, exc)
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False
    finally:
        for end in (self._gk_wake_r, self._gk_wake_w):
            end.close()
        # the association's reactor ends when this thread has: it is woken now, while this
        # thread is still alive, so it is told by the flag rather than by is_alive()
        self._gk_ended = True
        _wake_association(self.assoc)


def _abort_from_reactor(dul: DULServiceProvider, exc: Exception) -> None:
    """What pynetdicom's reactor does with an exception: log it, A-ABORT, end both threads."""
    _dul_log.error("Exception in DUL.run(), aborting association")
    _dul_log.exception(exc)
    abort_pdu = A_ABORT_RQ()
    abort_pdu.source = 0x02
    abort_pdu.reason_diagnostic = 0x00
    dul.socket.send(abort_pdu.encode())
    dul.assoc.is_aborted = True
    dul.assoc.is_established = False
    dul.assoc._kill = True
    dul._kill_thread = True


def _wait_for_dul_work(dul: DULServiceProvider) -> None:
    """Wait until the peer's socket has bytes, a primitive or event is queued, ARTIM is due or
    :data:`IDLE_WAIT` has passed; whichever comes first."""
    timeout = min(IDLE_WAIT, max(dul.artim_timer.remaining, 0.001))
    wait_on = [dul._gk_wake_r]
    transport = dul.socket
    peer = transport.socket if transport is not None and transport._is_connected else None
    if peer is not None:
        if isinstance(peer, ssl.SSLSocket) and peer.pending():
            return  # decrypted bytes already buffered, which select cannot see
        wait_on.append(peer)
    try:
        ready, _, _ = select(wait_on, [], [], timeout)
    except (OSError, ValueError):  # the peer's socket was closed meanwhile: the loop sees it
        return
    if dul._gk_wake_r in ready:
        try:
            while dul._gk_wake_r.recv(4096):
                pass
        except OSError:  # drained
            pass


def _stop_dul(self: DULServiceProvider) -> bool:
    """``DULServiceProvider.stop_dul`` (change 8): wake the thread it waits for."""
    if self.state_machine.current_state == "Sta1":
        self._kill_thread = True
        _wake_dul(self)
    return _original_stop_dul(self)


def _kill_dul(self: DULServiceProvider) -> None:
    """``DULServiceProvider.kill_dul`` (change 8): wake the thread it ends."""
    _original_kill_dul(self)
    _wake_dul(self)


def _association_reactor(self: Association) -> None:
    """``Association._run_reactor`` (change 8): pynetdicom's loop, which sleeps a millisecond a
    turn, waiting instead for a message, a primitive from the peer, the DUL thread's end, a
    kill, or the network idle timer.

    While it waits it touches no queue, so it counts as paused for a caller that pauses it to
    send and receive itself (``send_c_store`` and the like clear ``_reactor_checkpoint`` and
    wait for ``_is_paused``), as it does at the checkpoint.
    """
    wake = _association_wake(self)
    busy = True
    self._is_paused = False
    while not self._kill:
        self._is_paused = True
        if not busy:
            timer = self.dul._idle_timer
            wake.wait(min(IDLE_WAIT, max(timer.remaining, 0.001)))
        wake.clear()  # before looking: anything put from now on sets it again
        _pass_checkpoint(self)
        busy = False

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, context_id)
            busy = True  # more may be queued behind it

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            _association_log.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            _association_log.info(log_msg)
            self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires for its handlers
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if self.dul.__dict__.get("_gk_ended") or not self.dul.is_alive():
            self.kill()  # waits for the DUL thread's very end
            return

        if self.dul.idle_timer_expired():
            _association_log.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


def _pass_checkpoint(assoc: Association) -> None:
    """Wait at ``_reactor_checkpoint`` until it is set, and leave paused no longer.

    pynetdicom's loop waits at the checkpoint, then sets ``_is_paused`` false: a caller that
    clears the checkpoint in between still reads ``_is_paused`` true, takes the reactor for
    paused, sends its request, and may have its response taken by the reactor. Looking at the
    checkpoint again after ``_is_paused`` is false closes that gap: a caller that read it
    true had cleared the checkpoint before, so the reactor sees it cleared and waits again.
    """
    while True:
        assoc._is_paused = True
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False
        if assoc._reactor_checkpoint.is_set():
            return


def _serve_request(self: Association, msg, context_id: int) -> None:
    """``Association._serve_request`` (change 8): when served off the reactor's thread, wake it.

    pynetdicom serves an N-EVENT-REPORT request on a thread of its own (so as not to block
    the DUL thread), and ``_serve_request`` ends by setting ``_is_paused`` false. pynetdicom's
    reactor sets it true again within a millisecond; a waiting one would not until woken, and
    a caller pausing the reactor (a release after a storage commitment report, say) would
    wait for it meanwhile.
    """
    try:
        _original_serve_request(self, msg, context_id)
    finally:
        if threading.current_thread() is not self:
            _wake_association(self)


def _kill(self: Association) -> None:
    """``Association.kill`` (change 8): wake the reactor it ends."""
    _wake_association(self)
    _original_kill(self)


# -- change 9: a received instance's File Meta and its C-STORE response without pydicom ------

_original_create_file_meta = dimse_messages.create_file_meta
#: What pynetdicom's File Meta names as the implementation that wrote the file (its defaults).
_IMPLEMENTATION_UID = str(PYNETDICOM_IMPLEMENTATION_UID)
_IMPLEMENTATION_VERSION = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
_original_write_file_meta_info = dimse_messages.write_file_meta_info
#: The C-STORE-RSP attributes :func:`_store_rsp_pdu` encodes; a response with any other
#: (Error Comment, Offending Element, ...) is encoded by pynetdicom.
_STORE_RSP_KEYS = ("AffectedSOPClassUID", "AffectedSOPInstanceUID", "MessageIDBeingRespondedTo", "Status")
_STORE_RSP_OTHERS = tuple(k for k in _FIND_RSP_KEYS if k not in _STORE_RSP_KEYS) + ("OffendingElement", "ErrorComment")


class _FileMeta(tuple):
    """What ``dsutils.create_file_meta`` is given in ``decode_msg``: (SOP class, SOP instance,
    transfer syntax), for :func:`_write_file_meta_info`."""


def _create_file_meta(*, sop_class_uid, sop_instance_uid, transfer_syntax, **others):
    """``dimse_messages.create_file_meta`` (change 9): the values, not a pydicom dataset."""
    if others:
        return _original_create_file_meta(sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid,
                                          transfer_syntax=transfer_syntax, **others)
    return _FileMeta((sop_class_uid, sop_instance_uid, transfer_syntax))


def _write_file_meta_info(fp, file_meta, enforce_standard: bool = True) -> None:
    """``dimse_messages.write_file_meta_info`` (change 9): the bytes pydicom writes for the File
    Meta pynetdicom makes (PS3.10 7.1), from :func:`file_meta_bytes`; pydicom for anything else."""
    if isinstance(file_meta, _FileMeta):
        encoded = file_meta_bytes(*file_meta)
        if encoded is not None:
            fp.write(encoded)
            return
        file_meta = _original_create_file_meta(sop_class_uid=file_meta[0], sop_instance_uid=file_meta[1],
                                               transfer_syntax=file_meta[2])
    _original_write_file_meta_info(fp, file_meta, enforce_standard)


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes | None:
    """The File Meta Information group pynetdicom writes before a received dataset, encoded in
    Explicit VR Little Endian as pydicom encodes it; None when a value is not a plain UID
    (empty, not ASCII), which pydicom is left to deal with."""
    values = [_uid_bytes(v) for v in (sop_class, sop_instance, transfer_syntax, _IMPLEMENTATION_UID)]
    if any(v is None for v in values):
        return None
    body = [struct.pack("<HH2sHH", 0x0002, 0x0001, b"OB", 0, 2), b"\x00\x00", b"\x00\x01"]
    for element, value in zip((0x0002, 0x0003, 0x0010, 0x0012), values):
        body.append(struct.pack("<HH2sH", 0x0002, element, b"UI", len(value)) + value)
    version = _IMPLEMENTATION_VERSION + (b" " if len(_IMPLEMENTATION_VERSION) % 2 else b"")
    body.append(struct.pack("<HH2sH", 0x0002, 0x0013, b"SH", len(version)) + version)
    rest = b"".join(body)
    return struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(rest)) + rest


def _uid_bytes(value) -> bytes | None:
    """A UID value as written: ASCII, padded with a NUL to an even length."""
    if not isinstance(value, str) or not value or not value.isascii() or len(value) > 64:
        return None
    encoded = value.encode("ascii")
    return encoded + b"\x00" if len(encoded) % 2 else encoded


def _store_rsp_pdus(dimse: DIMSEServiceProvider, primitive, context_id: int) -> list[bytes] | None:
    """The P-DATA-TF PDU of a C-STORE response as pynetdicom would send it (PS3.7 9.3.1.2:
    the command set in Implicit VR Little Endian); None for any other message, a response
    with more than a status (Error Comment, Offending Element), or when something watches."""
    if (type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None
            or any(getattr(primitive, k, None) is not None for k in _STORE_RSP_OTHERS)
            or _watched(dimse.assoc)):
        return None
    message_id, status = primitive.MessageIDBeingRespondedTo, primitive.Status
    if type(message_id) is not int or type(status) is not int or not (0 <= message_id <= 0xFFFF and 0 <= status <= 0xFFFF):
        return None
    elements = []
    for element, value in ((0x0002, primitive.AffectedSOPClassUID), (0x0100, 0x8001), (0x0120, message_id),
                           (0x0800, 0x0101), (0x0900, status), (0x1000, primitive.AffectedSOPInstanceUID)):
        if isinstance(value, int):
            elements.append(struct.pack("<HHLH", 0x0000, element, 2, value))
        elif value is not None:
            encoded = _uid_bytes(value)
            if encoded is None:
                return None
            elements.append(struct.pack("<HHL", 0x0000, element, len(encoded)) + encoded)
    rest = b"".join(elements)
    command = struct.pack("<HHLL", 0x0000, 0x0000, 4, len(rest)) + rest
    return _frame(context_id, 0x01, command, dimse.maximum_pdu_size)


# -- change 12: a C-STORE request's command set decoded without pydicom ----------------------

_original_decode = dimse_messages.decode
_original_store_rq_to_primitive = C_STORE_RQ.message_to_primitive
#: The elements of a C-STORE-RQ's command set this decodes (PS3.7 9.3.1.1), and their VR;
#: a command set with any other, or without one of these, is left to pydicom.
_STORE_RQ_ELEMENTS = {
    0x0000: ("CommandGroupLength", "UL"),
    0x0002: ("AffectedSOPClassUID", "UI"),
    0x0100: ("CommandField", "US"),
    0x0110: ("MessageID", "US"),
    0x0700: ("Priority", "US"),
    0x0800: ("CommandDataSetType", "US"),
    0x1000: ("AffectedSOPInstanceUID", "UI"),
}
#: A UID as PS3.5 9.1 writes it: components of digits without leading zeros, at most 64 characters.
_PLAIN_UID = re.compile(rb"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


class _PlainUID(UID):
    """A UID that :func:`store_request_values` found as PS3.5 9.1 writes it (changes 12 and 13)."""

    __slots__ = ()


def store_request_values(encoded: bytes) -> dict | None:
    """The values of a C-STORE-RQ command set (implicit VR little endian) made of exactly the
    elements of :data:`_STORE_RQ_ELEMENTS`, in order, each well formed; None for any other."""
    values: dict = {}
    offset, end, last = 0, len(encoded), -1
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = struct.unpack_from("<HHL", encoded, offset)
        offset += 8
        known = _STORE_RQ_ELEMENTS.get(element)
        if group != 0x0000 or known is None or element <= last or length > end - offset:
            return None
        last = element
        keyword, vr = known
        value = encoded[offset:offset + length]
        offset += length
        if vr == "US" and length == 2:
            values[keyword] = struct.unpack("<H", value)[0]
        elif vr == "UL" and length == 4:
            values[keyword] = struct.unpack("<L", value)[0]
        elif vr == "UI" and length % 2 == 0:
            uid = value[:-1] if value.endswith(b"\x00") else value
            if not 0 < len(uid) <= 64 or not _PLAIN_UID.fullmatch(uid):
                return None
            values[keyword] = _PlainUID(uid.decode("ascii"), validation_mode=pydicom_config.IGNORE)
        else:
            return None
    if len(values) != len(_STORE_RQ_ELEMENTS) or _MESSAGE_TYPES.get(values["CommandField"], ("",))[0] != "C-STORE-RQ":
        return None
    if values["CommandDataSetType"] == 0x0101 or values["CommandGroupLength"] != end - 12:
        return None  # no data set (PS3.7 E.1), or a group length that is not the group's
    return values


class _StoreCommand:
    """The command set of a C-STORE request (change 12): its values as attributes, as pydicom
    would give them; anything else (iteration, ``in``, ``[tag]``, another attribute) is
    answered by pydicom's decoding of the same bytes, made on first use."""

    def __init__(self, encoded: bytes, values: dict) -> None:
        self._encoded = encoded
        self._decoded = None
        self.__dict__.update(values)

    def _dataset(self):
        if self._decoded is None:
            self._decoded = _original_decode(BytesIO(self._encoded), True, True)
        return self._decoded

    def __getattr__(self, name: str):  # only for names not set in __init__
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._dataset(), name)

    def __iter__(self):
        return iter(self._dataset())

    def __contains__(self, key) -> bool:
        return key in self._dataset()

    def __getitem__(self, key):
        return self._dataset()[key]

    def __len__(self) -> int:
        return len(self._dataset())


def _decode(bytestring: BytesIO, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False):
    """``dimse_messages.decode`` (change 12), which decodes command sets only."""
    if is_implicit_vr and is_little_endian and not deflated:
        encoded = bytestring.getvalue()
        values = store_request_values(encoded)
        if values is not None:
            return _StoreCommand(encoded, values)
    return _original_decode(bytestring, is_implicit_vr, is_little_endian, deflated)


def _store_rq_to_primitive(self: C_STORE_RQ):
    """``C_STORE_RQ.message_to_primitive`` (change 12): the same C_STORE primitive, its UIDs
    set without validating them again."""
    cs = self.command_set
    if not isinstance(cs, _StoreCommand):
        return _original_store_rq_to_primitive(self)
    primitive = C_STORE()
    primitive.MessageID = cs.MessageID
    primitive.Priority = cs.Priority
    primitive._affected_sop_class_uid = cs.AffectedSOPClassUID  # checked by store_request_values
    primitive._affected_sop_instance_uid = cs.AffectedSOPInstanceUID
    primitive.DataSet = self.data_set
    primitive._context_id = self.context_id
    primitive._dataset_path = self._data_set_path
    primitive._dataset_file = self._data_set_file
    return primitive


# -- change 13: a UID checked once is not checked again --------------------------------------

#: The C_STORE primitive's UID properties given :class:`_PlainUID` values, and where each keeps its value.
_ONCE_CHECKED = (("AffectedSOPClassUID", "_affected_sop_class_uid"),
                 ("_AffectedSOPInstanceUID", "_affected_sop_instance_uid"))
#: pynetdicom's own properties (their setters take every value :class:`_PlainUID` is not).
_original_uid_properties = {name: getattr(C_STORE, name) for name, _ in _ONCE_CHECKED}


def _set_once(original: property, attribute: str) -> property:
    """``original`` with a setter that keeps a :class:`_PlainUID` as it is; any other value goes
    to ``original``'s setter (pynetdicom's ``set_uid``: converted, validated, refused if bad)."""
    def setter(self, value) -> None:
        if type(value) is _PlainUID:
            setattr(self, attribute, value)
        else:
            original.fset(self, value)

    return property(original.fget, setter, original.fdel, original.__doc__)
