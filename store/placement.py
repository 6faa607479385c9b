"""Where a study's files are: the per-study lock, and moving the files into the tree of the study's state.

Every file of a study lives in the tree of its state (:data:`TREE_OF`). An action that
changes the state marks the study ``pending_files`` (:data:`store.index.MOVE` or
:data:`store.index.PRUNE`) in the same transaction; :meth:`Placement.settle` then moves
or deletes the files and clears the mark, under the study's lock.

**The lock.** Every path that writes, moves or deletes a study's files takes
:meth:`Placement.lock` first: receiving, review, recovery and the purge. It is an
exclusive ``flock`` on one of :data:`LOCK_STRIPES` files in ``<storage root>/.locks/``,
so it serialises the server's associations, the command line and any other process on
the same machine alike (a threading lock would not see the command line).
"""

from __future__ import annotations

import fcntl
import logging
import os
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from store import archive as trees
from store.archive import WRITE_ERRORS, Archive
from store.index import MOVE, PRUNE, Index
from store.states import ARCHIVED, HELD, REJECTED

log = logging.getLogger("store.placement")

#: The tree each kept state's files live in (a purged study has none).
TREE_OF = {ARCHIVED: trees.ARCHIVE_TREE, HELD: trees.HELD_TREE, REJECTED: trees.REJECTED_TREE}
#: Number of lock files the studies are spread over.
LOCK_STRIPES = 256


class Placement:
    """Keeps each study's files in the tree of its state, under the study's lock."""

    def __init__(self, archive: Archive, index: Index) -> None:
        self.archive = archive
        self.index = index
        self._locks = archive.root / ".locks"
        self._locks.mkdir(exist_ok=True)

    @contextmanager
    def lock(self, study: str) -> Iterator[None]:
        """Exclusive per-study lock, between threads and processes (``flock`` on a stripe file)."""
        stripe = zlib.crc32(study.encode()) % LOCK_STRIPES
        fd = os.open(self._locks / f"{stripe:03d}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def settle_or_log(self, study: str) -> int:
        """:meth:`settle` after the index already says where the study is: a failure is
        logged and left for the next start (the files are durable wherever they are)."""
        try:
            return self.settle(study)
        except (*WRITE_ERRORS, OSError) as exc:
            log.error("could not move the files of study %s into the tree of its state: %s; "
                      "the gatekeeper finishes this at its next start", study, exc)
            return 0

    def settle(self, study: str) -> int:
        """Put every file of ``study`` in the tree of its state (the caller holds the lock).

        With ``pending_files`` = MOVE, files in other trees are moved there; a file whose
        instance is already in the target tree is the older copy and is deleted instead.
        With PRUNE, files in other trees are deleted. Then the mark is cleared. Returns
        the number of files moved or deleted. Safe to repeat after a crash.
        """
        row = self.index.study_row(study)
        if row is None or not row.pending_files:
            return 0
        target = TREE_OF.get(row.state)
        count = 0
        for tree in trees.TREES:
            if tree == target:
                continue
            for path in self.archive.study_files(tree, study):
                series, sop = path.parent.name, path.name[: -len(trees.SUFFIX)]
                if row.pending_files == PRUNE or target is None or self.archive.exists(target, study, series, sop):
                    count += self.archive.remove(tree, study, series, sop)
            if row.pending_files == MOVE and target is not None and self.archive.study_files(tree, study):
                count += len(self.archive.move_study(study, tree, target).moved)
        self.index.clear_pending(row)
        return count

    def remove_file(self, relative: Path) -> None:
        """Delete one stored file by its path relative to the root; a failure is logged."""
        tree, study, series, name = relative.parts[-4:]
        try:
            self.archive.remove(tree, study, series, name[: -len(trees.SUFFIX)])
        except (*WRITE_ERRORS, ValueError) as exc:
            log.error("could not remove %s: %s", relative, exc)
