"""The transfer syntaxes the gatekeeper accepts, for every presentation context, in one place.

Each service module passes one of these lists to ``ae.add_supported_context``; a context
that proposes none of them is rejected at association time (PS3.8 9.3.3.2: transfer
syntaxes not supported), so the sender falls back to another syntax it offers.

**Deflated Explicit VR Little Endian (1.2.840.10008.1.2.1.99) is refused on every
context.** Its dataset is zlib-deflated, and pydicom inflates it whole, in memory, to read
it: 1 MB on the wire can inflate to 1 GiB (2 GB of resident memory in the gatekeeper for
one such C-STORE, 5 GB for four at once). The same is true of a deflated C-FIND
identifier, MPPS or storage commitment dataset. No modality needs it (every sender also
offers an uncompressed syntax), so no context accepts it, whatever arrives.

Order matters: when a proposed context lists several syntaxes the gatekeeper accepts, the
first one *in these lists* that the context lists is chosen (pynetdicom's acceptor
negotiation): uncompressed first, then lossless, then lossy.
"""

from __future__ import annotations

import pydicom.uid as ts

#: For Verification (C-ECHO), Modality Worklist (C-FIND), MPPS (N-CREATE, N-SET) and
#: Storage Commitment (N-ACTION): the three uncompressed syntaxes of PS3.5 10, no Deflated.
NON_STORAGE = (ts.ExplicitVRLittleEndian, ts.ImplicitVRLittleEndian, ts.ExplicitVRBigEndian)

#: For every storage SOP class; the dataset is kept as received, never transcoded.
STORAGE = (
    ts.ExplicitVRLittleEndian, ts.ImplicitVRLittleEndian,
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

#: Never accepted, on any context (see above).
REFUSED = (ts.DeflatedExplicitVRLittleEndian,)
