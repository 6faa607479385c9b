"""DICOM status codes the gatekeeper returns, in one place (PS3.4 and PS3.7 Annex C)."""

SUCCESS = 0x0000
PENDING = 0xFF00  # C-FIND: a match follows, every optional key supported
PENDING_WARNING = 0xFF01  # C-FIND: a match follows, some optional keys not supported
CANCEL = 0xFE00  # C-FIND: matching ended by C-CANCEL

# C-STORE (PS3.4 B.2.3)
OUT_OF_RESOURCES = 0xA700  # refused: out of resources (disk full); the sender should retry
CANNOT_UNDERSTAND = 0xC000  # error: cannot understand / cannot process
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # C-STORE error; C-FIND "identifier does not match SOP class"
WARNING_COERCION = 0xB000  # C-STORE warning: coercion of data elements

# C-FIND (PS3.4 C.4.1.1.4)
FIND_OUT_OF_RESOURCES = 0xA700
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000

# N-CREATE / N-SET / N-ACTION (PS3.7 C.4)
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_INSTANCE = 0x0112
NO_SUCH_ACTION_TYPE = 0x0123
INVALID_ATTRIBUTE_VALUE = 0x0106
INVALID_OBJECT_INSTANCE = 0x0117
DUPLICATE_SOP_INSTANCE = 0x0111
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
NO_SUCH_ATTRIBUTE = 0x0105

# MPPS N-SET on a step already COMPLETED or DISCONTINUED (PS3.4 F.7.2.2.3 and Table F.7.2-2):
# Processing failure 0x0110 with this Error Comment (0000,0902) and Error ID (0000,0903).
# (MPPS has no service-specific failure code; 0xC310 is a UPS status, PS3.4 CC.)
MPPS_MAY_NO_LONGER_BE_UPDATED = PROCESSING_FAILURE
MPPS_MAY_NO_LONGER_BE_UPDATED_ERROR_ID = 0xA710
MPPS_MAY_NO_LONGER_BE_UPDATED_COMMENT = "Performed Procedure Step Object may no longer be updated"

# N-ACTION (PS3.7 C.5): an Action Information argument is missing or wrong
INVALID_ARGUMENT_VALUE = 0x0115

# Storage commitment N-EVENT-REPORT (PS3.4 J.3.3.1.1): Event Type ID
COMMIT_EVENT_ALL_COMMITTED = 1  # Storage Commitment Request Successful
COMMIT_EVENT_FAILURES_EXIST = 2  # Storage Commitment Request Complete - Failures Exist
# Failure Reason (0008,1197) of a Failed SOP Sequence item (PS3.3 C.14.1.1)
COMMIT_FAILURE_PROCESSING = 0x0110  # known, but not durably stored (file missing, study not kept)
COMMIT_FAILURE_NO_SUCH_OBJECT = 0x0112  # never received
COMMIT_FAILURE_CLASS_INSTANCE_CONFLICT = 0x0119  # received under another SOP class
COMMIT_FAILURE_SOP_CLASS_NOT_SUPPORTED = 0x0122
