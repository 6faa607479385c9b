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
"""

from __future__ import annotations

import copy
import logging
import socket
import struct
import threading
import time
import weakref
from collections import OrderedDict
from pathlib import Path

from pydicom.uid import UID
from io import BytesIO

from pynetdicom import _config, _handlers, dimse_messages, dsutils, evt, fsm, service_class
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA

log = logging.getLogger("gateway.dicom.tuning")

#: The folder each serving AE's received datasets are written to.
_RECEIVE_DIRS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_original_named_temporary_file = dimse_messages.NamedTemporaryFile


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
    """Changes 1, 2, 4, 5, 6 and 7, for the whole process (called once when the server is built)."""
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
    """

    def __init__(self, file, *, error: BaseException | None = None, folder: Path | None = None) -> None:
        self._file = file
        self.error = error
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
                return self._file.write(data)
            except OSError as exc:
                self._fail(exc)
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
    try:
        pdu, event = dul._decode_pdu(bytearray(header + body))
    except Exception:
        log.warning("undecodable PDU (type 0x%02X, %d bytes) from %s", pdu_type, length, _peer(dul))
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


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


def _recv(dul: DULServiceProvider, count: int, deadline: float | None) -> bytes:
    """Up to ``count`` bytes (fewer when the peer closes); TimeoutError past the bounds."""
    sock = dul.socket.socket if dul.socket is not None else None
    if sock is None:
        raise ConnectionError("socket closed")
    silence = dul.network_timeout
    data = bytearray()
    try:
        while len(data) < count:
            timeout, why = silence, f"nothing received for {silence}s"
            if deadline is not None and (silence is None or deadline - time.monotonic() < silence):
                timeout = max(deadline - time.monotonic(), 0.0)
                why = f"no complete PDU within the ARTIM timer ({dul.artim_timer.timeout}s)"
            if timeout == 0:
                raise TimeoutError(why)
            sock.settimeout(timeout)
            try:
                chunk = sock.recv(min(count - len(data), 1 << 16))
            except TimeoutError:
                raise TimeoutError(why) from None
            if not chunk:
                break
            data += chunk
    finally:
        sock.settimeout(silence)  # what sends wait at most, too
    return bytes(data)


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

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []
        self.size = 0
        self.responses = 0
        self.since = 0.0

    @property
    def data(self) -> bytes:
        return b"".join(self.parts)


def _send_msg(dimse: DIMSEServiceProvider, primitive, context_id: int) -> None:
    """``DIMSEServiceProvider.send_msg`` (change 7): a pending C-FIND response joins the batch."""
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
        log.warning("a batch of %d C-FIND responses was not sent: the connection is closed", primitive.responses)
    return _P_DATA_ACTIONS[action]
