"""Making what was written durable: the fsync of a file, and of a folder after an entry in it
was created, renamed or removed (POSIX makes a rename durable only with its folder's fsync)."""

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
