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
# MPPS-specific (PS3.4 F.7.2.2.2): N-SET on a step no longer IN PROGRESS
MPPS_NOT_IN_PROGRESS = 0xC310
