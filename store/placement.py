"""Where a study's files are: the per-study lock, and moving the files into the tree of the study's state.

Every file of a study lives in the tree of its state (:data:`TREE_OF`). An action that
changes the state marks the study ``pending_files`` (:data:`store.index.MOVE` or
:data:`store.index.PRUNE`) in the same transaction; :meth:`Placement._settle` then moves
or deletes the files and clears the mark, under the study's lock.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from store import archive as trees
from store import index
from store.archive import Archive, ArchiveWriteError
from store.models import ARCHIVED, HELD, REJECTED

log = logging.getLogger("store.service")

#: The tree each kept state's files live in (a purged study has none).
TREE_OF = {ARCHIVED: trees.ARCHIVE, HELD: trees.HELD, REJECTED: trees.REJECTED}
#: Number of lock files the studies are spread over.
LOCK_STRIPES = 256


class Placement:
    """The part of :class:`store.service.Store` that keeps each study's files in one tree."""

    archive: Archive
    root: Path
    clock: Callable[[], dt.datetime]
    _locks: Path  # <storage root>/.locks, made by the store

    @contextmanager
    def _study_lock(self, study: str) -> Iterator[None]:
        """Exclusive per-study lock, between threads and processes (``flock`` on a stripe file)."""
        stripe = zlib.crc32(study.encode()) % LOCK_STRIPES
        fd = os.open(self._locks / f"{stripe:03d}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _settle_or_log(self, study: str) -> int:
        """:meth:`_settle` after an instance was filed: the instance is durable and indexed
        whatever happens here, so a failure is logged and left for the next start."""
        try:
            return self._settle(study)
        except (ArchiveWriteError, OSError) as exc:
            log.error("could not move the files of study %s into the tree of its state: %s; "
                      "the gatekeeper finishes this at its next start", study, exc)
            return 0

    def _settle(self, study: str) -> int:
        """Put every file of ``study`` in the tree of its state (caller holds the lock).

        With ``pending_files`` = MOVE, files in other trees are moved there; a file whose
        instance is already in the target tree is the older copy and is deleted instead.
        With PRUNE, files in other trees are deleted. Then the mark is cleared. Returns
        the number of files moved or deleted. Safe to repeat after a crash.
        """
        row = index.study_row(study)
        if row is None or not row.pending_files:
            return 0
        target = TREE_OF.get(row.state)
        count = 0
        for tree in trees.TREES:
            if tree == target:
                continue
            files = self.archive.study_files(tree, study)
            for path in files:
                series, sop = path.parent.name, path.name[: -len(trees.SUFFIX)]
                if row.pending_files == index.PRUNE or target is None or self.archive.exists(target, study, series, sop):
                    count += self.archive.remove(tree, study, series, sop)
            if row.pending_files == index.MOVE and target is not None and self.archive.study_files(tree, study):
                count += len(self.archive.move_study(study, tree, target).moved)
        index.clear_pending(row)
        return count

    def _remove_file(self, relative: Path) -> None:
        tree, study, series, name = relative.parts[-4:]
        try:
            self.archive.remove(tree, study, series, name[: -len(trees.SUFFIX)])
        except (ArchiveWriteError, ValueError) as exc:
            log.error("could not remove %s: %s", relative, exc)
