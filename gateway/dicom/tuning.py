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
4. **UIDs are not copied when contexts are.** pynetdicom deep-copies the supported
   presentation contexts for every association
   (``transport.RequestHandler._create_association``):
   with every storage class and its transfer syntaxes that is about 6,000 UIDs, each
   rebuilt and re-validated, some 90 ms before a console's query or a modality's first
   image. A UID is an immutable string, so a copy may share it (about 7 ms).
"""

from __future__ import annotations

import copy
import threading
import weakref
from pathlib import Path

from pydicom.uid import UID
from pynetdicom import _config, dimse_messages

#: The folder each serving AE's received datasets are written to.
_RECEIVE_DIRS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_original_named_temporary_file = dimse_messages.NamedTemporaryFile


def apply() -> None:
    """Changes 1, 2 and 4, for the whole process (called once when the server is built)."""
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.STORE_RECV_CHUNKED_DATASET = True
    copy._deepcopy_dispatch.setdefault(UID, _share)


def _share(uid: UID, memo: dict) -> UID:
    return uid


def receive_into(ae, folder: Path) -> None:
    """Change 3: make pynetdicom write the datasets ``ae`` receives into ``folder``.

    pynetdicom 3.0 calls ``NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")``
    (``dimse_messages.DIMSEMessage.decode_msg``) from the association's DUL thread, whose
    ``assoc.ae`` names the AE. The wrapper installed here adds ``dir=folder`` for the AEs
    registered with this function.
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


def partial_receive_path(assoc) -> Path | None:
    """The file of a dataset the association was receiving when it ended, if any.

    pynetdicom keeps it on ``assoc.dimse.message._data_set_path`` and deletes only files it
    handed to the handler.
    """
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    path = getattr(message, "_data_set_path", None)
    return path if isinstance(path, Path) else None
