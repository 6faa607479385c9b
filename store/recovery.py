"""Start-up recovery (SPEC rule 4): finish what a crash interrupted, before serving.

The two journals it reads are described in :mod:`store.service` ("Order of writes"): the
in-flight links in ``incoming/`` (:data:`store.filing.INFLIGHT`) and the studies marked
``pending_files``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from store import archive as trees
from store import index
from store.archive import file_digest, unlink_quietly
from store.filing import INFLIGHT, Filing, ReceiveFailed
from store.header import UnreadableInstance, read_header

log = logging.getLogger("store.service")  # the store's log lines keep one logger name


@dataclass(frozen=True)
class Recovery:
    """What :meth:`Store.recover` did at start."""

    refiled: tuple[str, ...]  # SOP Instance UIDs filed again after an interrupted index
    settled: tuple[str, ...]  # studies whose interrupted move or prune was finished
    leftovers: int  # partial files removed from incoming/


class StartupRecovery(Filing):
    """The part of :class:`store.service.Store` that runs at start."""

    def recover(self) -> Recovery:
        """Finish what a crash interrupted, then clear ``incoming/``; run before serving.

        1. Each in-flight link whose file is in a tree but not indexed with that content
           is filed again (reconciled and indexed as if just received).
        2. Each study marked ``pending_files`` gets its files moved or pruned.
        3. Everything left in ``incoming/`` (partial receives, links, temporary copies)
           is removed.
        """
        refiled = []
        for link in sorted(self.archive.incoming.glob(INFLIGHT + "*")):
            uid = self._refile(link)
            if uid:
                refiled.append(uid)
        settled = []
        for uid in index.pending_studies():
            with self._study_lock(uid):
                self._settle(uid)
            settled.append(uid)
        leftovers = self.archive.recover()
        return Recovery(tuple(refiled), tuple(settled), leftovers.count)

    def _refile(self, link: Path) -> str | None:
        try:
            header = read_header(link)
        except (UnreadableInstance, OSError):
            return None
        study, series, sop = header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        placed = [t for t in trees.TREES if _same_file(self.archive.path_of(t, study, series, sop), link)]
        if not placed:
            return None  # the rename never happened, or a later copy replaced this one
        tree = placed[0]
        row = index.instance_row(sop)
        relative = self.archive.relative_path(tree, study, series, sop)
        if row is not None and Path(row.path) == relative and row.size == link.stat().st_size:
            size, digest = file_digest(link)
            if digest == row.sha256:
                return None  # indexed before the crash; only the link was left
        calling = row.received_from if row is not None else ""
        try:
            received = self.receive(link, calling)  # link is in incoming/: renamed onto itself
        except ReceiveFailed as exc:
            log.error("could not file instance %s again after the interrupted write: %s", sop, exc)
            return None
        if received.stored.path != relative:
            self._remove_file(relative)
        unlink_quietly(link)
        log.warning("instance %s of study %s was written but not indexed when the gatekeeper stopped; "
                    "it is filed now (%s)", sop, study, received.summary())
        return sop


def _same_file(path: Path, other: Path) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False

