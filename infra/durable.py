"""Making what was written durable: the fsync of a file, and of a folder after an entry in it
was created, renamed or removed (POSIX makes a rename durable only with its folder's fsync);
and letting the kernel forget a durable file's pages (:func:`forget_cached`)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Make the content of the file at ``path`` durable (fsync on a descriptor of its own)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` durable: files created, renamed into or out of it."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def forget_cached(fd: int) -> None:
    """Tell the kernel that the pages of the file open on ``fd``, written and fsynced, will not be
    read again soon (``posix_fadvise`` DONTNEED), so that it frees them now.

    A received instance is read once more at most (by the forwarder, when it sends the study
    on) after it is filed; kept in the page cache, every received byte would push out what is
    read all the time (the index, the worklist's orders), and each new file would take fresh
    pages while clean ones wait to be reclaimed. Only clean pages are dropped: call it after
    the fsync. Where the call does not exist or the file system refuses it nothing happens:
    it is advice, never needed for correctness.
    """
    if _DONTNEED is None:
        return
    try:
        os.posix_fadvise(fd, 0, 0, _DONTNEED)
    except OSError:
        pass


def forget_cached_file(path: Path) -> None:
    """:func:`forget_cached` for the file at ``path`` (one that cannot be opened is left alone)."""
    if _DONTNEED is None:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        forget_cached(fd)
    finally:
        os.close(fd)


#: ``posix_fadvise``'s DONTNEED advice, where this system has it (Linux, the BSDs; not macOS or Windows).
_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None) if hasattr(os, "posix_fadvise") else None
