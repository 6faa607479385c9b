"""Durable file storage for received instances (rule 4 of docs/rules.md: nothing is lost).

Under the storage root::

    archive/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   studies that passed
    held/...                                                              studies under review
    rejected/...                                                          rejected, kept a while
    incoming/<owner>/                                                     temporary files of one process
    incoming/<owner>.lock                                                 held while that process lives

All of it lives on one file system, so a rename between them is atomic. A file reaches a
tree only by ``os.replace`` of a complete temporary file from ``incoming/`` that was
fsynced first, and the directory is fsynced after the rename (and after creating any
folder). A crash at any moment therefore leaves either the old state or the whole new
file, never part of one. Only then may the caller acknowledge the C-STORE (0x0000).
Once durable, a filed file's pages are let go from the page cache
(:func:`infra.durable.forget_cached`): what was received is read again once at most, and the
cache is kept for the index and the worklist.

Several processes may share one storage root: each writes its temporary files in a
folder of its own under ``incoming/``, claimed by an exclusive ``flock`` on
``<owner>.lock`` that lasts as long as the process. A folder whose lock nobody holds
belongs to a process that is gone: :meth:`Archive.abandoned` hands such folders to the
start-up recovery, which finishes or removes what they hold. A live process's files are
never touched.

Writing the same SOP Instance UID again replaces the file atomically: a re-sent instance
never makes a duplicate. Files are streamed in 1 MiB chunks and hashed (SHA-256) as they go.

Operations on one study (writing into it, moving it, removing it) must be serialised by the
caller; different studies may be handled concurrently. Files are created readable by the
gatekeeper's user only (they hold patient data).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from infra.durable import forget_cached, forget_cached_file, fsync_dir, fsync_file
from infra.errors import InvalidInput, OutOfResources, StorageFailure
from store.header import uid_is_well_formed

#: The trees a stored file can be in (one per kept study state, :data:`store.placement.TREE_OF`).
ARCHIVE_TREE = "archive"
HELD_TREE = "held"
REJECTED_TREE = "rejected"
TREES = (ARCHIVE_TREE, HELD_TREE, REJECTED_TREE)
INCOMING = "incoming"
CHUNK_SIZE = 1024 * 1024
SUFFIX = ".dcm"

#: Errors that go away once space, quota, memory or descriptors are freed.
RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EMFILE, errno.ENFILE})
#: What a failed write raises: out of resources (the sender should retry later, 0xA700)
#: or a refusal of the volume (read-only, permissions, I/O error: 0xC000).
WRITE_ERRORS = (OutOfResources, StorageFailure)
#: Suffix of an owner's lock file in ``incoming/``.
LOCK_SUFFIX = ".lock"
#: Threads that hash and fsync received files while the receiving thread reads their header
#: (:meth:`Archive.sync_ahead`). More concurrent receives than this queue for a thread.
SYNC_THREADS = 8


@dataclass(frozen=True)
class StoredFile:
    """A file written into a tree: its path relative to the root, size and SHA-256 (hex)."""

    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class MoveReport:
    """What :meth:`Archive.move_study` moved: the new paths, relative to the root."""

    study_instance_uid: str
    from_tree: str
    to_tree: str
    moved: tuple[Path, ...]


class Archive:
    """The storage root with its ``archive/``, ``held/``, ``rejected/`` and ``incoming/``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.incoming_root = self.root / INCOMING
        self._own: Path | None = None  # this process's folder in incoming/, claimed on first use
        self._own_resolved: Path | None = None  # the same, symbolic links resolved (it never moves)
        self._own_lock: int | None = None
        self._claiming = threading.Lock()
        self._syncing: ThreadPoolExecutor | None = None  # made on first use (sync_ahead)
        self._syncing_pid = 0  # the process that made it: a forked child makes its own
        try:
            for name in (*TREES, INCOMING):
                self._make_dirs(self.root / name)
        except OSError as exc:
            raise _write_error(exc, f"could not prepare the storage root {self.root}") from exc

    # -- this process's incoming folder ----------------------------------------------------

    @property
    def incoming(self) -> Path:
        """This process's folder for temporary files, ``incoming/<owner>/`` (claimed on first use)."""
        if self._own is None:
            with self._claiming:
                if self._own is None:
                    self._claim()
        return self._own

    def _claim(self) -> None:
        """Take a lock file under a hidden name, then give it its owner name, then make the folder.

        The rename keeps the lock, so no other process ever sees an owner name whose lock
        is free while its owner lives.
        """
        try:
            fd, temp = tempfile.mkstemp(dir=self.incoming_root, prefix=f".p{os.getpid()}-", suffix=".tmp")
            fcntl.flock(fd, fcntl.LOCK_EX)
            owner = Path(temp).name[1:-len(".tmp")]
            os.replace(temp, self.incoming_root / (owner + LOCK_SUFFIX))
            folder = self.incoming_root / owner
            folder.mkdir()
            fsync_dir(self.incoming_root)
        except OSError as exc:
            raise _write_error(exc, f"could not claim a folder in {self.incoming_root}") from exc
        self._own_resolved = folder.resolve()
        self._own, self._own_lock = folder, fd

    def is_incoming(self, path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is a file directly in this process's incoming folder, symbolic links resolved.

        The same answer as comparing ``path.resolve().parent`` with the folder, without
        resolving every component of both for each received instance: a path named inside the
        folder (as pynetdicom names the files it receives) needs one ``lstat``, to see that it
        is not a symbolic link to somewhere else. Anything else is resolved.
        """
        path = path if isinstance(path, Path) else Path(path)  # Path(a Path) parses it again
        own = self.incoming
        if path.parent == own or path.parent == self._own_resolved:
            try:
                if not stat.S_ISLNK(os.lstat(path).st_mode):
                    return True
            except OSError:
                pass  # gone or unreadable: resolve it as before
        return path.resolve().parent == self._own_resolved

    def close(self) -> None:
        """Give up this process's incoming folder (at a clean stop; what is left in it is removed)."""
        syncing, self._syncing = self._syncing, None
        if syncing is not None:
            syncing.shutdown(wait=True)
        if self._own is None:
            return
        try:
            _remove_tree(self._own)
            os.unlink(self._own.with_name(self._own.name + LOCK_SUFFIX))
        except OSError:
            pass  # the next start's recovery removes it
        finally:
            os.close(self._own_lock)
            self._own = self._own_resolved = self._own_lock = None

    def abandoned(self) -> Iterator[Path]:
        """Each incoming folder whose owner process is gone, locked for the caller meanwhile.

        The caller takes what it needs from the folder (in-flight links, see
        :mod:`store.recovery`); when it asks for the next one, the folder and its lock file
        are removed. Folders of live processes are skipped. Files left directly in
        ``incoming/`` by versions before 0.2 come first, as the folder ``incoming/`` itself.
        """
        own = self.incoming
        legacy = [e for e in os.scandir(self.incoming_root) if e.is_file(follow_symlinks=False)
                  and not e.name.endswith((LOCK_SUFFIX, ".tmp"))]
        if legacy:
            yield self.incoming_root
            for entry in legacy:
                unlink_quietly(Path(entry.path))
        names = {e.name for e in os.scandir(self.incoming_root)}
        owners = sorted({n[:-len(LOCK_SUFFIX)] for n in names if n.endswith(LOCK_SUFFIX)}
                        | {n for n in names if (self.incoming_root / n).is_dir()})
        for owner in owners:
            folder = self.incoming_root / owner
            if folder == own:
                continue
            fd = _lock_if_free(folder.with_name(owner + LOCK_SUFFIX))
            if fd is False:
                continue  # its process is alive
            try:
                if folder.is_dir():
                    yield folder
                    _remove_tree(folder)
                unlink_quietly(folder.with_name(owner + LOCK_SUFFIX))
                fsync_dir(self.incoming_root)
            finally:
                if fd is not None:
                    os.close(fd)
        for entry in os.scandir(self.incoming_root):  # hidden lock files of claims that never finished
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                fd = _lock_if_free(Path(entry.path))
                if fd is not None and fd is not False:
                    unlink_quietly(Path(entry.path))
                    os.close(fd)

    def adopt(self, path: Path) -> Path:
        """Move a file of an abandoned folder into this process's own (same name); its new path."""
        target = self.incoming / path.name
        os.replace(path, target)
        return target

    # -- where things are -------------------------------------------------------------

    def relative_path(self, tree: str, study: str, series: str, sop: str) -> Path:
        """``<tree>/<study>/<series>/<sop>.dcm``; every UID must be well formed."""
        _check_tree(tree)
        for uid in (study, series, sop):
            _check_uid(uid)
        return Path(tree, study, series, sop + SUFFIX)

    def path_of(self, tree: str, study: str, series: str, sop: str) -> Path:
        """The absolute path of an instance's file in ``tree`` (whether or not it exists)."""
        return self.root / self.relative_path(tree, study, series, sop)

    def exists(self, tree: str, study: str, series: str, sop: str) -> bool:
        return self.path_of(tree, study, series, sop).is_file()

    def locate(self, study: str, series: str, sop: str) -> tuple[str, ...]:
        """The trees holding a file for this instance (normally none or one)."""
        return tuple(t for t in TREES if self.exists(t, study, series, sop))

    def trees_of(self, study: str) -> tuple[str, ...]:
        """The trees holding at least one file of ``study``."""
        return tuple(t for t in TREES if self.study_files(t, study))

    def study_files(self, tree: str, study: str) -> tuple[Path, ...]:
        """The absolute paths of ``study``'s files in ``tree``, sorted."""
        _check_tree(tree)
        _check_uid(study)
        folder = self.root / tree / study
        if not folder.is_dir():
            return ()
        return tuple(sorted(p for p in folder.glob(f"*/*{SUFFIX}") if p.is_file()))

    # -- writing ------------------------------------------------------------------------

    def check_room(self, min_free_mb: int) -> None:
        """Refuse a new instance when the storage volume is below its free-space reserve.

        Raises :class:`~infra.errors.OutOfResources` when fewer than ``min_free_mb`` MiB are
        free for the gatekeeper's user on the volume of the storage root (``os.statvfs``:
        blocks available to unprivileged users), so a C-STORE is refused with 0xA700 before
        anything is written and the volume never fills up. ``min_free_mb`` of 0 or less
        checks nothing. When the volume cannot be asked, the write itself will tell.
        """
        if min_free_mb <= 0:
            return
        try:
            stats = os.statvfs(self.root)
        except OSError:
            return
        free = stats.f_bavail * stats.f_frsize
        if free < min_free_mb * 1024 * 1024:
            raise OutOfResources(
                f"the storage volume of {self.root} has {free // (1024 * 1024)} MiB free, below its reserve of "
                f"{min_free_mb} MiB (storage.min_free_mb); nothing was written. Free space on the volume; "
                "the sender will retry.")

    def new_incoming(self) -> Path:
        """A fresh, empty file in this process's incoming folder for the caller to write into.

        Hand it to :meth:`write_new` as ``source``; the next start's recovery removes it if
        the process dies first.
        """
        try:
            fd, name = tempfile.mkstemp(dir=self.incoming, prefix="rx-", suffix=".part")
            os.close(fd)
        except OSError as exc:
            raise _write_error(exc, f"could not create a file in {self.incoming}") from exc
        return Path(name)

    def sync_ahead(self, path: str | os.PathLike[str], written: tuple[int, str] | None = None) -> "Ahead":
        """Start the fsync of the file at ``path``, and its hash unless ``written`` gives it, each on
        a thread of its own.

        A received file must be durable before it is renamed into its tree, and its size and
        SHA-256 go in the index. Both wait on the disk or hash without the interpreter lock
        (one read and one hash update per MiB), so they can go on while the receiving thread
        checks the file, reads its header and reconciles the instance, and beside each other.
        Hand the result to :meth:`write_new` as ``synced``, which waits for both before the
        rename (the order of writes stays: file durable, then renamed, then indexed). The file
        must not be written to after this call. When no thread can be had (the archive is
        closing) the work is done here and the result is ready.

        ``written`` is the size and SHA-256 of the file as its writer computed them from the
        bytes it wrote, in order, from the first (the DICOM receiver does,
        :class:`gateway.dicom.tuning._ReceivedFile`): the file is then not read again, only
        fsynced, and a file whose size is not ``written``'s fails the fsync (EIO).
        """
        path = path if isinstance(path, Path) else Path(path)
        with self._claiming:
            if self._syncing is None or self._syncing_pid != os.getpid():  # a fork has none of its threads
                self._syncing = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="archive-sync")
                self._syncing_pid = os.getpid()
            if written is None:
                return Ahead(self._start(file_digest, path), self._start(fsync_file, path))
            return Ahead(_ready(written), self._start(_fsync_sized, path, written[0]))

    def _start(self, function, *args) -> Future:
        """``function(*args)`` on a sync thread; here and now when the archive is closing."""
        pool = self._syncing
        try:
            if pool is not None:
                return pool.submit(function, *args)
        except RuntimeError:  # shut down meanwhile
            pass
        return _done(function, *args)

    def write_new(
        self, tree: str, study: str, series: str, sop: str, source: bytes | str | os.PathLike[str], *,
        synced: "Ahead | None" = None,
    ) -> StoredFile:
        """Store one instance durably in ``tree`` and return where, its size and checksum.

        ``source`` is the file's bytes, or the path of a file holding them. A path directly
        inside this process's incoming folder is consumed: renamed into place on success,
        deleted on failure. Any other path is copied and left alone. An existing file for
        the same instance in the same tree is replaced atomically. ``synced`` is the hash and
        fsync :meth:`sync_ahead` started for a consumed ``source``: it is waited for (and its
        error, if any, raised as the write's) instead of hashing and fsyncing here.
        Raises :class:`~infra.errors.OutOfResources` or :class:`~infra.errors.StorageFailure`.
        """
        relative = self.relative_path(tree, study, series, sop)
        final = self.root / relative
        in_memory = isinstance(source, (bytes, bytearray, memoryview))
        consumed = not in_memory and self.is_incoming(source)
        temp: Path | None = (source if isinstance(source, Path) else Path(source)) if consumed else None
        try:
            if in_memory:
                temp, size, digest = self._write_temp(_chunks_of(source))
            elif consumed:
                size, digest = synced.result() if synced is not None else file_digest(temp, sync=True)
                forget_cached_file(temp)  # read (header, hash) and durable: its pages may go
            else:
                with open(source, "rb") as f:
                    temp, size, digest = self._write_temp(iter(lambda: f.read(CHUNK_SIZE), b""))
            self._install(temp, final)
            temp = None
            return StoredFile(relative, size, digest)
        except OSError as exc:
            raise _write_error(exc, f"could not store {relative}") from exc
        finally:
            if temp is not None:
                unlink_quietly(temp)

    def move_study(self, study: str, from_tree: str, to_tree: str) -> MoveReport:
        """Move every file of ``study`` from one tree to another, each by an atomic rename.

        A file already in ``to_tree`` for the same instance is replaced. Safe to run again
        after a crash mid-move: it moves what is left, and does nothing once all is moved.
        Emptied folders in ``from_tree`` are removed. Raises one of :data:`WRITE_ERRORS`.
        """
        _check_tree(from_tree)
        _check_tree(to_tree)
        _check_uid(study)
        if from_tree == to_tree:
            raise ValueError(f"cannot move study {study} from {from_tree} to itself")
        moved: list[Path] = []
        source_study = self.root / from_tree / study
        try:
            present = source_study.is_dir()
            series_dirs = sorted(p for p in source_study.iterdir() if p.is_dir()) if present else []
            for series_dir in series_dirs:
                target = self.root / to_tree / study / series_dir.name
                files = sorted(p for p in series_dir.iterdir() if p.is_file() and p.suffix == SUFFIX)
                if files:
                    self._make_dirs(target)
                for path in files:
                    os.replace(path, target / path.name)
                    moved.append(Path(to_tree, study, series_dir.name, path.name))
                if files:
                    fsync_dir(target)
                    fsync_dir(series_dir)
                _rmdir_if_empty(series_dir)
            _rmdir_if_empty(source_study)
        except OSError as exc:
            what = f"could not move study {study} from {from_tree} to {to_tree}"
            raise _write_error(exc, what) from exc
        return MoveReport(study, from_tree, to_tree, tuple(moved))

    def remove(self, tree: str, study: str, series: str, sop: str) -> bool:
        """Delete one instance's file from ``tree``; False when it was not there."""
        path = self.path_of(tree, study, series, sop)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _write_error(exc, f"could not remove {path.relative_to(self.root)}") from exc
        try:
            fsync_dir(path.parent)
            _rmdir_if_empty(path.parent)
            _rmdir_if_empty(path.parent.parent)
        except OSError as exc:
            raise _write_error(exc, f"could not remove {path.relative_to(self.root)}") from exc
        return True

    def remove_study(self, tree: str, study: str) -> int:
        """Delete every file of ``study`` in ``tree`` (the rejected-study purge); the count."""
        count = 0
        for path in self.study_files(tree, study):
            series = path.parent.name
            count += self.remove(tree, study, series, path.name[: -len(SUFFIX)])
        return count

    # -- internals ----------------------------------------------------------------------

    def _write_temp(self, chunks: Iterable[bytes | memoryview]) -> tuple[Path, int, str]:
        """Write ``chunks`` to a new file in ``incoming/``, fsync it; (path, size, sha256)."""
        fd, name = tempfile.mkstemp(dir=self.incoming, prefix="wr-", suffix=".part")
        temp = Path(name)
        try:
            digest, size = hashlib.sha256(), 0
            with open(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
                forget_cached(f.fileno())
        except BaseException:
            unlink_quietly(temp)
            raise
        return temp, size, digest.hexdigest()

    def _install(self, temp: Path, final: Path) -> None:
        """Rename the synced ``temp`` to ``final`` and make the rename durable."""
        self._make_dirs(final.parent)
        try:
            os.replace(temp, final)
        except FileNotFoundError:
            if not temp.exists():
                raise
            self._make_dirs(final.parent)  # a concurrent cleanup removed an emptied folder
            os.replace(temp, final)
        fsync_dir(final.parent)

    def _make_dirs(self, folder: Path) -> None:
        """Create ``folder`` and missing parents, fsyncing each parent that got a new entry."""
        missing: list[Path] = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            fsync_dir(path.parent)


class Ahead:
    """The hash and the fsync of one received file, running on the archive's sync threads
    (:meth:`Archive.sync_ahead`)."""

    def __init__(self, hashed: Future, synced: Future) -> None:
        self._futures = (hashed, synced)

    def result(self, timeout: float | None = None) -> tuple[int, str]:
        """Wait for both; the file's size and SHA-256, or the first error (an OSError)."""
        hashed, synced = self._futures
        synced.result(timeout)
        return hashed.result(timeout)

    def cancel(self) -> bool:
        """Cancel what has not started; True when neither will run."""
        return all([future.cancel() for future in self._futures])

    def wait(self) -> None:
        """Wait for what was not cancelled to end, whatever its outcome."""
        for future in self._futures:
            if not future.cancelled():
                future.exception()


def _done(function, *args) -> Future:
    """A future already holding ``function(*args)``'s result or OSError."""
    done: Future = Future()
    try:
        done.set_result(function(*args))
    except OSError as exc:
        done.set_exception(exc)
    return done


def _ready(value) -> Future:
    """A future already holding ``value``."""
    done: Future = Future()
    done.set_result(value)
    return done


def _fsync_sized(path: Path, size: int) -> None:
    """fsync the file at ``path``, which its writer says holds ``size`` bytes (EIO if it does not)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        found = os.fstat(fd).st_size
        if found != size:
            raise OSError(errno.EIO, f"the file holds {found} bytes where {size} were written")
        os.fsync(fd)
    finally:
        os.close(fd)


def _chunks_of(data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK_SIZE):
        yield view[start : start + CHUNK_SIZE]


def file_digest(path: Path, *, sync: bool = False) -> tuple[int, str]:
    """Size and SHA-256 of a file, read in chunks; with ``sync``, fsync it on the same descriptor."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(f.fileno())
    return size, digest.hexdigest()


def _rmdir_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise
        return
    fsync_dir(folder.parent)


def _remove_tree(folder: Path) -> None:
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            _remove_tree(Path(entry.path))
        else:
            os.unlink(entry.path)
    os.rmdir(folder)


def unlink_quietly(path: Path | None) -> None:
    """Remove ``path`` if there is one; a file already gone, or that cannot go, is left to the start-up clean-up."""
    if path is None:
        return
    try:
        os.unlink(path)
    except OSError:
        pass


def _check_tree(tree: str) -> None:
    if tree not in TREES:
        raise ValueError(f"unknown tree {tree!r}; use one of {', '.join(TREES)}")


def _check_uid(uid: str) -> None:
    if not uid_is_well_formed(uid):
        raise InvalidInput(f"{uid!r} is not a well-formed UID (PS3.5 9.1) and cannot name a file")


def _lock_if_free(path: Path) -> int | None | bool:
    """An exclusive lock on ``path`` if nobody holds one: its descriptor; None when the file
    is gone; False when a live process holds it."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    return fd


def _write_error(exc: OSError, what: str) -> OutOfResources | StorageFailure:
    """Name the failure and what to do about it, and classify it for the DICOM status."""
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        advice = "the storage volume is full or over quota; free space and the sender will retry"
    elif code in RESOURCE_ERRNOS:
        advice = "the system is out of memory or file descriptors; the sender's retry may succeed"
    elif code == errno.EROFS:
        advice = "the storage volume is read-only; remount it read-write"
    elif code in (errno.EACCES, errno.EPERM):
        advice = "the gatekeeper may not write there; fix the folder's owner or permissions"
    else:
        advice = "check the storage volume and the system log"
    kind = OutOfResources if code in RESOURCE_ERRNOS else StorageFailure
    reason = exc.strerror or str(exc)
    return kind(f"{what}: {reason}; {advice}.")
