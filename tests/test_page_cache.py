"""A filed instance's pages leave the page cache once the file is durable (infra.durable.forget_cached).

Residency is read with mincore(2) on a private mapping of the file, as util-linux's
``fincore`` reads it. A file system that keeps every page in memory (tmpfs) cannot let them
go: there the tests are skipped, after a probe that shows it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import mmap
import os
from pathlib import Path

import pytest

from infra import durable
from store.archive import ARCHIVE_TREE, Archive
from tests.dicom_factory import make_instance, write_instance

PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def resident_pages(path: Path) -> int:
    """How many pages of the file at ``path`` are in the page cache."""
    size = path.stat().st_size
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        pages = (size + PAGE - 1) // PAGE
        vector = (ctypes.c_ubyte * pages)()
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        try:
            if _libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del address  # the buffer export must end before the mapping closes
        return sum(v & 1 for v in vector)


def _image(side: int):
    """An instance with ``side`` x ``side`` 16-bit pixels."""
    return make_instance(Rows=side, Columns=side, PixelData=os.urandom(side * side * 2))


def _written(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return data


@pytest.fixture
def droppable(tmp_path):
    """Skip where this file system keeps a durable file's pages whatever it is told."""
    if durable._DONTNEED is None:
        pytest.skip("this system has no posix_fadvise")
    probe = tmp_path / "probe"
    _written(probe, 64 * PAGE)
    if resident_pages(probe) == 0:
        pytest.skip("this file system does not keep written pages in the page cache")
    durable.forget_cached_file(probe)
    if resident_pages(probe) != 0:
        pytest.skip(f"the file system of {tmp_path} keeps a durable file's pages (tmpfs?)")
    probe.unlink()
    return tmp_path


def test_a_written_and_fsynced_file_is_in_the_cache_until_forgotten(droppable):
    path = droppable / "f"
    _written(path, 32 * PAGE)
    assert resident_pages(path) == 32
    durable.forget_cached_file(path)
    assert resident_pages(path) == 0


def test_forgetting_a_file_never_changes_it(droppable):
    path = droppable / "f"
    data = _written(path, 10 * PAGE + 17)
    durable.forget_cached_file(path)
    assert path.read_bytes() == data


def test_without_posix_fadvise_nothing_is_dropped_and_nothing_fails(droppable, monkeypatch):
    path = droppable / "f"
    _written(path, 8 * PAGE)
    monkeypatch.setattr(durable, "_DONTNEED", None)
    durable.forget_cached_file(path)
    with open(path, "rb") as f:
        durable.forget_cached(f.fileno())
    assert resident_pages(path) == 8


def test_a_file_that_cannot_be_opened_is_left_alone(droppable):
    durable.forget_cached_file(droppable / "not-there")  # no error: it is advice


def test_a_received_file_filed_from_incoming_leaves_the_cache(droppable):
    archive = Archive(droppable / "store")
    source = archive.new_incoming()
    ds = _image(362)
    write_instance(source, ds)
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    stored = archive.write_new(ARCHIVE_TREE, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                               source, synced=archive.sync_ahead(source))
    final = archive.root / stored.path
    assert resident_pages(final) == 0
    assert stored.sha256 == expected == hashlib.sha256(final.read_bytes()).hexdigest()
    archive.close()


def test_a_received_file_filed_without_a_sync_ahead_leaves_the_cache(droppable):
    archive = Archive(droppable / "store")
    source = archive.new_incoming()
    ds = _image(256)
    write_instance(source, ds)
    stored = archive.write_new(ARCHIVE_TREE, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, source)
    assert resident_pages(archive.root / stored.path) == 0
    archive.close()


def test_bytes_filed_from_memory_leave_the_cache(droppable):
    archive = Archive(droppable / "store")
    data = os.urandom(40 * PAGE)
    stored = archive.write_new(ARCHIVE_TREE, "1.2.3", "1.2.3.4", "1.2.3.4.5", data)
    final = archive.root / stored.path
    assert resident_pages(final) == 0
    assert final.read_bytes() == data
    archive.close()


def test_a_file_copied_in_from_elsewhere_leaves_the_cache_and_its_source_is_untouched(droppable):
    archive = Archive(droppable / "store")
    elsewhere = droppable / "elsewhere.dcm"
    data = _written(elsewhere, 24 * PAGE)
    stored = archive.write_new(ARCHIVE_TREE, "1.2.3", "1.2.3.4", "1.2.3.4.6", elsewhere)
    assert resident_pages(archive.root / stored.path) == 0
    assert resident_pages(elsewhere) == 24  # not ours to forget
    assert elsewhere.read_bytes() == data
    archive.close()
