"""Receiving, filing and reviewing studies: the IO side of SPEC rules 3, 4 and 5.

:class:`Store` files each received instance (:meth:`Store.receive`): it reads the header
only (:func:`store.header.read_header`), reconciles it with its order
(:func:`store.reconcile.reconcile`), decides the study's state (the study is the unit,
:func:`store.reconcile.study_state`), writes the file durably into the tree of that state
(:class:`store.archive.Archive`) and indexes it (:mod:`store.models`). Only then may the
caller acknowledge the C-STORE. Operators review held studies with :meth:`Store.release`,
:meth:`Store.correct` and :meth:`Store.reject`; each action is audited.

:class:`Store` is put together from its parts, one module each: filing
(:mod:`store.filing`), start-up recovery (:mod:`store.recovery`), review
(:mod:`store.review`), the per-study lock and file moves (:mod:`store.placement`); their
queries and writes of the index are in :mod:`store.index`.

Rules these modules keep (README, "Storage"):

- **One tree per study.** Every file of a study is in the tree of its state: ``archive/``
  when archived, ``held/`` when held, ``rejected/`` when rejected. When an archived study
  becomes held (an instance that fails reconciliation arrives), its archived files move
  to ``held/`` with it, so the operator reviews the whole study and a release or a
  correction acts on all of it.
- **Re-sent instances replace.** An instance received again (same SOP Instance UID)
  replaces the stored file atomically, the index row is updated in place (never a
  second row) and its findings are derived again: a modality that re-sends after fixing
  the console's values is taken at its word.
- **Order of writes.** File first (fsynced, renamed into place, folder fsynced), then the
  index in one transaction, then the acknowledgement. Two small journals make a crash at
  any point recoverable at the next start (:meth:`Store.recover`):

  * before the rename, a second name (hard link ``incoming/inflight-*``) of the received
    file is made, and it is removed once the index row is committed. A crash in between
    leaves the link: at start, a file that is in a tree but not in the index is filed
    again from it. Every other file in ``incoming/`` is a partial receive and is removed.
  * an action that changes a study's state and so moves its files sets
    ``StudyRow.pending_files`` in the same transaction and clears it once the files are in
    place; at start, a study still marked gets its files moved (or pruned) then.

- **Locks.** Deciding a study's state, moving its files and indexing them are done under
  a per-study lock: an exclusive ``flock`` on one of :data:`store.placement.LOCK_STRIPES`
  files in ``<storage root>/.locks/``. It serialises the server's associations and the
  command line's review actions on one machine alike (a threading lock would not see the
  command line). Gateways on several machines sharing one PostgreSQL database must not
  share a storage root. The index transactions of one process also take turns
  (:data:`store.index.ONE_WRITER`).

Per-instance work is small: the header read (no pixel data), a cached order check per
accession and day (:class:`store.filing.Session`, one per association, dropped with it),
two indexed look-ups and one transaction of prepared statements
(:class:`store.index.Rows`). The fsyncs are the file's, its folder's (both in
:meth:`Archive.write_new`) and the index commit's; none is repeated. Nothing here logs
patient names, IDs or birth dates at INFO.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Callable

from store.archive import Archive, ArchiveWriteError
from store.filing import (
    CANNOT_PROCESS, DOES_NOT_MATCH, INFLIGHT, OUT_OF_RESOURCES, OrderCheck, Received, ReceiveFailed, Session,
)
from store.index import MOVE, PRUNE
from store.placement import LOCK_STRIPES, TREE_OF
from store.reconcile import CODES
from store.recovery import Recovery, StartupRecovery
from store.review import (
    AUDIT_CORRECTED, AUDIT_REJECTED, AUDIT_RELEASED, ArchivedStudy, FindingSummary, HeldStudy, HeldStudyDetail,
    Review, ReviewResult, StudyRefused,
)
from worklist.policy import PayerPolicy

#: The store's names as callers knew them before the split, each from the module that now holds it.
__all__ = [
    "Store", "ArchiveWriteError", "CODES", "LOCK_STRIPES", "TREE_OF", "MOVE", "PRUNE",
    "CANNOT_PROCESS", "DOES_NOT_MATCH", "INFLIGHT", "OUT_OF_RESOURCES", "OrderCheck", "Received", "ReceiveFailed",
    "Session", "Recovery", "AUDIT_CORRECTED", "AUDIT_REJECTED", "AUDIT_RELEASED", "ArchivedStudy",
    "FindingSummary", "HeldStudy", "HeldStudyDetail", "ReviewResult", "StudyRefused",
]


class Store(StartupRecovery, Review):
    """The storage root and its index, with the rules that file and review studies.

    Its parts are base classes, one per module (:class:`store.recovery.StartupRecovery`,
    :class:`store.review.Review`, both on :class:`store.filing.Filing` on
    :class:`store.placement.Placement`). They share this object's attributes, set here, and
    call one another through ``self``: recovery files again with :meth:`receive`, review
    re-checks orders as filing does, and all of them settle files under the study's lock.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        policy: PayerPolicy,
        hold_codes: frozenset[str],
        ae_title: str,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.archive = Archive(root)
        self.root = self.archive.root
        self.policy = policy
        self.hold_codes = frozenset(hold_codes)
        self.ae_title = ae_title
        self.clock = clock
        self._incoming = self.archive.incoming.resolve()
        self._locks = self.root / ".locks"
        self._locks.mkdir(exist_ok=True)
        self._links_work = True
