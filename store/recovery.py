"""Start-up recovery (rule 4 of docs/rules.md): finish what a crash interrupted, before serving.

It reads two journals. The in-flight links (:data:`store.receiving.INFLIGHT`) in the
incoming folders of processes that are gone (:meth:`store.archive.Archive.abandoned`):
a link whose file is in a tree but not indexed with that content is filed again. And the
studies marked ``pending_files``: their files are moved or pruned into the tree of their
state. It touches only what its own process, or a process that is gone, left behind: a
gateway still running on the same storage root keeps its files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from infra.errors import GatekeeperError
from store import archive as trees
from store.archive import Archive, file_digest, unlink_quietly
from store.header import read_header
from store.index import Index
from store.placement import Placement
from store.receiving import INFLIGHT, Receiving

log = logging.getLogger("store.recovery")


@dataclass(frozen=True)
class Recovered:
    """What :meth:`Recovery.run` did at start."""

    refiled: tuple[str, ...]  # SOP Instance UIDs filed again after an interrupted index
    settled: tuple[str, ...]  # studies whose interrupted move or prune was finished
    leftovers: int  # partial files of gone processes removed from incoming/


class Recovery:
    """Finishes interrupted writes and moves; run once at start, before serving."""

    def __init__(self, archive: Archive, index: Index, placement: Placement, receiving: Receiving) -> None:
        self.archive = archive
        self.index = index
        self.placement = placement
        self.receiving = receiving

    def run(self) -> Recovered:
        """1. Each in-flight link of a gone process whose file is in a tree but not indexed
        with that content is filed again (reconciled and indexed as if just received).
        2. Each study marked ``pending_files`` gets its files moved or pruned.
        3. What else gone processes left in ``incoming/`` (partial receives) is removed.
        """
        refiled, leftovers = [], 0
        for folder in self.archive.abandoned():
            for link in sorted(folder.glob(INFLIGHT + "*")):
                uid = self._refile(self.archive.adopt(link))
                if uid:
                    refiled.append(uid)
            leftovers += sum(1 for p in folder.iterdir() if p.is_file() and not p.name.endswith(trees.LOCK_SUFFIX))
        settled = []
        for uid in list(self.index.pending_studies()):
            with self.placement.lock(uid):
                self.placement.settle(uid)
            settled.append(uid)
        return Recovered(tuple(refiled), tuple(settled), leftovers)

    def _refile(self, link: Path) -> str | None:
        try:
            try:
                header = read_header(link)
            except (GatekeeperError, OSError):
                return None
            study, series, sop = header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
            placed = [t for t in trees.TREES if _same_file(self.archive.path_of(t, study, series, sop), link)]
            if not placed:
                return None  # the rename never happened, or a later copy replaced this one
            relative = self.archive.relative_path(placed[0], study, series, sop)
            row = self.index.instance_row(sop)
            if row is not None and Path(row.path) == relative and row.size == link.stat().st_size:
                if file_digest(link)[1] == row.sha256:
                    return None  # indexed before the crash; only the link was left
            calling = row.received_from if row is not None else ""
            try:
                received = self.receiving.receive(link, calling)  # in our incoming/: renamed onto itself
            except GatekeeperError as exc:
                log.error("could not file instance %s again after the interrupted write: %s", sop, exc)
                return None
            if received.stored.path != relative:
                self.placement.remove_file(relative)
            log.warning("instance %s of study %s was written but not indexed when the gatekeeper stopped; "
                        "it is filed now (%s)", sop, study, received.summary())
            return sop
        finally:
            unlink_quietly(link)


def _same_file(path: Path, other: Path) -> bool:
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False
