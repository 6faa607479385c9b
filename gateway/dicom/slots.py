"""Association slots counted across processes: ``server.max_associations`` and
``server.max_associations_per_address`` when several processes receive (``server.workers``).

Each slot is a small file, ``<storage root>/.locks/associations/NNNN.slot`` (one per slot of
``server.max_associations``). An association holds a slot while it holds an exclusive
``flock`` on that file, and the file says from which address. The decision to admit (count
the held slots, in all and from the peer's address, then take a free one and write the
address into it) is made under one more ``flock``, on ``admit.lock``, so two processes
never both take the last slot.

Why files and ``flock``: the kernel releases a lock when its process dies, however it dies
(``kill -9`` too), so a dead worker's associations give their slots back at once, with
no bookkeeping to repair; and ``flock`` locks belong to an open file, so two threads of one
process exclude each other as two processes do. The cost is a few system calls per slot
at each A-ASSOCIATE-RQ (20 slots by default), small next to negotiation.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

FOLDER = Path(".locks") / "associations"
#: The longest address written into a slot (IPv6 with a zone fits).
ADDRESS_BYTES = 128


class Slot:
    """One slot held: :meth:`release` gives it back (closing the file releases the lock)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class SharedSlots:
    """The slots of every process receiving on one storage root."""

    def __init__(self, folder: Path, total: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.total = total

    @classmethod
    def of(cls, storage_root: Path, total: int) -> "SharedSlots":
        return cls(Path(storage_root) / FOLDER, total)

    def take(self, address: str, max_per_address: int) -> tuple[Slot | None, str | None]:
        """(the slot taken, None), or (None, the rule that refuses) when a limit is reached."""
        with self._deciding():
            held: list[str] = []
            free: int | None = None
            for number in range(self.total):
                fd = os.open(self.folder / f"{number:04d}.slot", os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    held.append(os.pread(fd, ADDRESS_BYTES, 0).decode(errors="replace"))
                    os.close(fd)
                    continue
                if free is None:
                    free = fd  # kept locked: ours if the limits allow
                else:
                    os.close(fd)
            total = len(held)
            mine = sum(1 for a in held if a == address)
            refusal = None
            if free is None:
                refusal = f"{total} associations already (server.max_associations = {self.total})"
            elif max_per_address and mine >= max_per_address:
                refusal = (f"{mine} associations from {address} already "
                           f"(server.max_associations_per_address = {max_per_address})")
            if refusal is not None:
                if free is not None:
                    os.close(free)
                return None, refusal
            assert free is not None
            os.ftruncate(free, 0)
            os.pwrite(free, address.encode()[:ADDRESS_BYTES], 0)
            return Slot(free), None

    def held(self) -> list[str]:
        """The addresses of the slots held now, by every process."""
        with self._deciding():
            found = []
            for number in range(self.total):
                path = self.folder / f"{number:04d}.slot"
                if not path.exists():
                    continue
                fd = os.open(path, os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    found.append(os.pread(fd, ADDRESS_BYTES, 0).decode(errors="replace"))
                finally:
                    os.close(fd)
            return found

    @contextmanager
    def _deciding(self) -> Iterator[None]:
        fd = os.open(self.folder / "admit.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
