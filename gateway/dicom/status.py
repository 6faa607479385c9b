"""DICOM status codes the gatekeeper returns, and the one map from core errors to them.

Codes are named once (PS3.7 Annex C, PS3.4 per service). :func:`failure` turns an
:mod:`infra.errors` error raised by the core into the status dataset of one DIMSE
service; each handler calls it from its one outer guard.
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset

from infra.errors import (
    AlreadyExists, GatekeeperError, InvalidInput, MissingValue, NotAuthorized, NotFound, NotSupported, OutOfResources,
    Undecodable, WrongState,
)

SUCCESS = 0x0000
PENDING = 0xFF00  # C-FIND: a match follows
CANCEL = 0xFE00  # C-FIND: matching ended by C-CANCEL

# C-STORE (PS3.4 B.2.3) and C-FIND (PS3.4 C.4.1.1.4)
OUT_OF_RESOURCES = 0xA700  # refused: out of resources; the sender should retry
DOES_NOT_MATCH_SOP_CLASS = 0xA900  # C-STORE: data set / C-FIND: identifier does not match SOP class
CANNOT_UNDERSTAND = 0xC000  # C-STORE: cannot understand; C-FIND: unable to process

# Any DIMSE service (PS3.7 Annex C, general status): the caller may not invoke the operation.
REFUSED_NOT_AUTHORIZED = 0x0124
# C-MOVE and C-GET (PS3.4 C.4.2.1.5, C.4.3.1.4)
MOVE_DESTINATION_UNKNOWN = 0xA801  # C-MOVE: no such Move Destination, or it refused the association
SUBOPERATIONS_FAILED = 0xA702  # every sub-operation failed (pynetdicom answers it)
SUBOPERATIONS_WARNING = 0xB000  # some sub-operations failed or had warnings (pynetdicom answers it)
RETRIEVE_OUT_OF_RESOURCES = 0xA701  # refused: out of resources, unable to calculate the matches

# N-CREATE, N-SET, N-ACTION (PS3.7 C.4)
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_INSTANCE = 0x0112
NO_SUCH_ACTION_TYPE = 0x0123
INVALID_ATTRIBUTE_VALUE = 0x0106
DUPLICATE_SOP_INSTANCE = 0x0111
MISSING_ATTRIBUTE = 0x0120
INVALID_ARGUMENT_VALUE = 0x0115  # N-ACTION: an Action Information argument is missing or wrong

# MPPS N-SET on a step already COMPLETED or DISCONTINUED (PS3.4 F.7.2.2.3, Table F.7.2-2):
# Processing failure with this Error ID (0000,0903) and Error Comment (0000,0902).
MPPS_FINAL_ERROR_ID = 0xA710
MPPS_FINAL_COMMENT = "Performed Procedure Step Object may no longer be updated"

# Storage commitment N-EVENT-REPORT (PS3.4 J.3.3.1.1): Event Type ID
COMMIT_EVENT_ALL_COMMITTED = 1  # Storage Commitment Request Successful
COMMIT_EVENT_FAILURES_EXIST = 2  # Storage Commitment Request Complete - Failures Exist
# Failure Reason (0008,1197) of a Failed SOP Sequence item (PS3.3 C.14.1.1)
COMMIT_FAILURE_PROCESSING = 0x0110  # known, but not durably stored (file missing, study not kept)
COMMIT_FAILURE_NO_SUCH_OBJECT = 0x0112  # never received
COMMIT_FAILURE_CLASS_INSTANCE_CONFLICT = 0x0119  # received under another SOP class

C_FIND, C_STORE, MPPS, N_ACTION = "C-FIND", "C-STORE", "MPPS", "N-ACTION"
C_MOVE, C_GET = "C-MOVE", "C-GET"

#: For each service: (error class, status), the first class the error is an instance of wins.
#: An error of no listed class (a bug, a lost database) gets the service's last resort.
_FAILURES: dict[str, tuple[tuple[type[Exception], int], ...]] = {
    C_FIND: ((Undecodable, CANNOT_UNDERSTAND), (InvalidInput, DOES_NOT_MATCH_SOP_CLASS),
             (OutOfResources, OUT_OF_RESOURCES)),
    C_STORE: ((OutOfResources, OUT_OF_RESOURCES), (Undecodable, CANNOT_UNDERSTAND),
              (InvalidInput, DOES_NOT_MATCH_SOP_CLASS)),
    MPPS: ((NotAuthorized, REFUSED_NOT_AUTHORIZED), (MissingValue, MISSING_ATTRIBUTE), (InvalidInput, INVALID_ATTRIBUTE_VALUE),
           (AlreadyExists, DUPLICATE_SOP_INSTANCE), (NotFound, NO_SUCH_SOP_INSTANCE),
           (WrongState, PROCESSING_FAILURE)),
    N_ACTION: ((NotSupported, NO_SUCH_ACTION_TYPE), (NotFound, NO_SUCH_SOP_INSTANCE),
               (InvalidInput, INVALID_ARGUMENT_VALUE)),
    C_MOVE: ((Undecodable, CANNOT_UNDERSTAND), (InvalidInput, DOES_NOT_MATCH_SOP_CLASS),
             (OutOfResources, RETRIEVE_OUT_OF_RESOURCES)),
    C_GET: ((Undecodable, CANNOT_UNDERSTAND), (InvalidInput, DOES_NOT_MATCH_SOP_CLASS),
            (OutOfResources, RETRIEVE_OUT_OF_RESOURCES)),
}
_LAST_RESORT = {C_FIND: CANNOT_UNDERSTAND, C_STORE: CANNOT_UNDERSTAND, MPPS: PROCESSING_FAILURE,
                N_ACTION: PROCESSING_FAILURE, C_MOVE: CANNOT_UNDERSTAND, C_GET: CANNOT_UNDERSTAND}
#: The Error Comment (LO, 64 characters) of a C-STORE failure; the log has the whole story.
_STORE_COMMENTS = {
    OUT_OF_RESOURCES: "Storage full or over quota; not stored, retry later",
    CANNOT_UNDERSTAND: "Not stored: unreadable or not writable; see gatekeeper log",
    DOES_NOT_MATCH_SOP_CLASS: "Dataset SOP Class/Instance UID differ from the request",
}


def status_of(service: str, exc: Exception) -> int:
    """The status ``service`` answers ``exc`` with."""
    for kind, status in _FAILURES[service]:
        if isinstance(exc, kind):
            return status
    return _LAST_RESORT[service]


def failure(service: str, exc: Exception, log: logging.Logger, what: str) -> Dataset:
    """The status dataset for a refused request; an error the core did not name is logged in full."""
    code = status_of(service, exc)
    if not isinstance(exc, GatekeeperError):
        log.exception("%s failed; answered 0x%04X", what, code)
    reply = Dataset()
    reply.Status = code
    if service == MPPS and isinstance(exc, WrongState):
        reply.ErrorComment = MPPS_FINAL_COMMENT
        reply.ErrorID = MPPS_FINAL_ERROR_ID
    elif service == C_STORE:
        reply.ErrorComment = _STORE_COMMENTS.get(code, _STORE_COMMENTS[CANNOT_UNDERSTAND])
    elif isinstance(exc, GatekeeperError):
        reply.ErrorComment = str(exc)[:64]  # LO: 64 characters at most
    return reply
