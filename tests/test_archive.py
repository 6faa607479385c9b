"""Rule 4 of docs/rules.md: files are written whole and durably, or not at all; header reads stay cheap."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import struct
import time
from pathlib import Path

import pytest

from store import archive as archive_module
from infra.errors import InvalidInput, OutOfResources, StorageFailure
from store.archive import (
    ARCHIVE_TREE as ARCHIVE,
    HELD_TREE as HELD,
    REJECTED_TREE as REJECTED,
    Archive,
)
from store.header import UnreadableInstance, read_header
from tests.dicom_factory import make_instance, write_instance

STUDY, SERIES, SOP = "1.2.826.0.1.3680043.8.498.10", "1.2.826.0.1.3680043.8.498.11", "1.2.826.0.1.3680043.8.498.12"


@pytest.fixture
def store(tmp_path) -> Archive:
    archive = Archive(tmp_path / "store")
    archive.incoming  # claim this "process's" incoming folder before any failure is injected
    yield archive
    archive.close()


def tree_files(store: Archive) -> list[str]:
    """Every file under the three trees, relative to the root."""
    return sorted(
        str(p.relative_to(store.root))
        for tree in ("archive", "held", "rejected")
        for p in (store.root / tree).rglob("*")
        if p.is_file()
    )


def incoming_files(store: Archive) -> list[str]:
    return sorted(p.name for p in store.incoming.iterdir())


def test_layout_is_created(store):
    assert {p.name for p in store.root.iterdir()} == {"archive", "held", "rejected", "incoming"}
    owner = store.incoming.name
    assert store.incoming.parent == store.root / "incoming"
    assert sorted(p.name for p in (store.root / "incoming").iterdir()) == [owner, owner + ".lock"]


def test_write_bytes_then_read_back(store):
    data = os.urandom(3 * 1024 * 1024 + 17)  # spans several chunks
    stored = store.write_new(ARCHIVE, STUDY, SERIES, SOP, data)
    assert stored.path == Path("archive", STUDY, SERIES, SOP + ".dcm")
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert (store.root / stored.path).read_bytes() == data
    assert store.path_of(ARCHIVE, STUDY, SERIES, SOP) == store.root / stored.path
    assert store.exists(ARCHIVE, STUDY, SERIES, SOP) and not store.exists(HELD, STUDY, SERIES, SOP)
    assert store.locate(STUDY, SERIES, SOP) == (ARCHIVE,)
    assert store.trees_of(STUDY) == (ARCHIVE,)
    assert incoming_files(store) == []


def test_write_a_real_instance_from_incoming_consumes_it(store):
    ds = make_instance()
    received = write_instance(store.new_incoming(), ds)
    data = received.read_bytes()
    stored = store.write_new(HELD, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, received)
    assert not received.exists()
    assert incoming_files(store) == []
    assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.size == len(data)
    assert read_header(store.root / stored.path).sop_instance_uid == ds.SOPInstanceUID


def test_write_from_a_path_elsewhere_copies_it(store, tmp_path):
    source = tmp_path / "elsewhere.bin"
    source.write_bytes(b"x" * 5000)
    stored = store.write_new(ARCHIVE, STUDY, SERIES, SOP, source)
    assert source.exists()
    assert (store.root / stored.path).read_bytes() == b"x" * 5000
    assert incoming_files(store) == []


def test_rewrite_of_the_same_instance_replaces_it_without_duplicate(store):
    store.write_new(ARCHIVE, STUDY, SERIES, SOP, b"first version")
    stored = store.write_new(ARCHIVE, STUDY, SERIES, SOP, b"second")
    assert (store.root / stored.path).read_bytes() == b"second"
    assert stored.sha256 == hashlib.sha256(b"second").hexdigest()
    assert tree_files(store) == [str(stored.path)]
    assert incoming_files(store) == []


@pytest.mark.parametrize(
    "code, kind",
    [
        (errno.ENOSPC, OutOfResources),
        (errno.EDQUOT, OutOfResources),
        (errno.EROFS, StorageFailure),
        (errno.EACCES, StorageFailure),
        (errno.EIO, StorageFailure),
    ],
)
@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_write_failure_names_its_kind_and_leaves_nothing(store, monkeypatch, code, kind, failing):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(archive_module.os, failing, fail)
    with pytest.raises(kind) as caught:
        store.write_new(ARCHIVE, STUDY, SERIES, SOP, b"data")
    assert os.strerror(code) in str(caught.value) and SOP in str(caught.value)
    assert tree_files(store) == []
    assert incoming_files(store) == []


def test_failure_on_a_rewrite_keeps_the_old_file(store, monkeypatch):
    store.write_new(ARCHIVE, STUDY, SERIES, SOP, b"old and complete")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(archive_module.os, "fsync", full)
    with pytest.raises(OutOfResources, match="full"):
        store.write_new(ARCHIVE, STUDY, SERIES, SOP, b"new")
    assert store.path_of(ARCHIVE, STUDY, SERIES, SOP).read_bytes() == b"old and complete"


def test_failure_deletes_a_consumed_incoming_source(store, monkeypatch):
    received = store.new_incoming()
    received.write_bytes(b"received")
    monkeypatch.setattr(archive_module.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EROFS, "ro")))
    with pytest.raises(StorageFailure, match="read-only"):
        store.write_new(ARCHIVE, STUDY, SERIES, SOP, received)
    assert incoming_files(store) == [] and tree_files(store) == []


def test_is_incoming_answers_as_resolving_the_path_does(store, tmp_path):
    """The quick check gives the answer of ``path.resolve().parent == incoming`` in every case."""
    inside = store.new_incoming()
    elsewhere = tmp_path / "elsewhere.dcm"
    elsewhere.write_bytes(b"x")
    out_link = store.incoming / "link-out.dcm"  # in the folder, but a link to a file outside it
    out_link.symlink_to(elsewhere)
    in_link = tmp_path / "link-in.dcm"  # outside, but a link to a file in the folder
    in_link.symlink_to(inside)
    nested = store.incoming / "sub"
    nested.mkdir()
    (nested / "deeper.dcm").write_bytes(b"x")
    via_link = tmp_path / "incoming-link"  # the folder itself reached through a symbolic link
    via_link.symlink_to(store.incoming, target_is_directory=True)
    cases = {
        inside: True, store.incoming / "not-yet-written.dcm": True, via_link / inside.name: True,
        Path(os.path.relpath(inside)): True, in_link: True,
        out_link: False, elsewhere: False, nested / "deeper.dcm": False, store.incoming: False,
    }
    for path, expected in cases.items():
        assert (path.resolve().parent == store.incoming.resolve()) is expected, path
        assert store.is_incoming(path) is expected, path
        assert store.is_incoming(str(path)) is expected, path


def test_a_file_synced_ahead_is_durable_before_it_is_renamed_into_place(store, monkeypatch):
    """The fsync started by sync_ahead runs on another thread; write_new waits for it before the rename."""
    ds = make_instance()
    received = write_instance(store.new_incoming(), ds)
    inode = received.stat().st_ino
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def slow_fsync(fd):
        if os.fstat(fd).st_ino == inode:
            time.sleep(0.2)  # a slow disk: a rename that does not wait comes first
            events.append("file fsynced")
        real_fsync(fd)

    def replace(src, dst):
        if Path(src) == received:
            events.append("renamed")
        real_replace(src, dst)

    monkeypatch.setattr(archive_module.os, "fsync", slow_fsync)
    monkeypatch.setattr(archive_module.os, "replace", replace)
    data = received.read_bytes()
    stored = store.write_new(HELD, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, received,
                             synced=store.sync_ahead(received))
    assert events == ["file fsynced", "renamed"]
    assert stored.size == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    assert (store.root / stored.path).read_bytes() == data and incoming_files(store) == []


@pytest.mark.parametrize("code, kind", [(errno.EIO, StorageFailure), (errno.ENOSPC, OutOfResources)])
def test_a_failed_sync_ahead_fails_the_write_and_leaves_nothing(store, monkeypatch, code, kind):
    received = store.new_incoming()
    received.write_bytes(b"received")
    inode = received.stat().st_ino
    real_fsync = os.fsync

    def fsync(fd):
        if os.fstat(fd).st_ino == inode:
            raise OSError(code, os.strerror(code))
        real_fsync(fd)

    monkeypatch.setattr(archive_module.os, "fsync", fsync)
    with pytest.raises(kind, match=os.strerror(code)):
        store.write_new(ARCHIVE, STUDY, SERIES, SOP, received, synced=store.sync_ahead(received))
    assert incoming_files(store) == [] and tree_files(store) == []


def test_sync_ahead_still_syncs_once_the_archive_is_closing(tmp_path, monkeypatch):
    archive = Archive(tmp_path / "store")
    received = archive.new_incoming()
    archive.sync_ahead(received).result()  # the thread pool exists
    archive._syncing.shutdown()
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(archive_module.os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd)))
    future = archive.sync_ahead(received)
    assert future.result() == (0, hashlib.sha256(b"").hexdigest())
    assert synced == [received.stat().st_ino]
    archive.close()


def test_a_forked_process_syncs_ahead_on_threads_of_its_own(store):
    """A child forked after the parent synced has none of the parent's threads: it must not wait on them."""
    store.sync_ahead(store.new_incoming()).result()
    received = store.new_incoming()
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its sync finishes
        try:
            store.sync_ahead(received).result(timeout=10)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_live_owners_incoming_folder_is_never_abandoned(store):
    partial = store.new_incoming()
    partial.write_bytes(b"half a file, still being received")
    other = Archive(store.root)  # a second process on the same storage root
    try:
        assert list(other.abandoned()) == []
        assert partial.exists()
    finally:
        other.close()
    assert partial.exists()


def test_a_gone_owners_incoming_folder_is_handed_over_then_removed(tmp_path):
    gone = Archive(tmp_path / "store")
    leftover = gone.new_incoming()
    leftover.write_bytes(b"half a file")
    (gone.incoming / "odd-folder").mkdir()
    (gone.incoming / "odd-folder" / "x").write_bytes(b"")
    gone.write_new(ARCHIVE, STUDY, SERIES, SOP, b"acknowledged")
    os.close(gone._own_lock)  # the process dies: its lock goes, its folder stays

    survivor = Archive(tmp_path / "store")
    try:
        handed = []
        for folder in survivor.abandoned():
            handed.append((folder, sorted(p.name for p in folder.iterdir())))
        assert handed == [(gone.incoming, sorted([leftover.name, "odd-folder"]))]
        assert sorted(p.name for p in (survivor.root / "incoming").iterdir()) == sorted(
            [survivor.incoming.name, survivor.incoming.name + ".lock"])
        assert survivor.exists(ARCHIVE, STUDY, SERIES, SOP)  # acknowledged files are untouched
        assert list(survivor.abandoned()) == []
    finally:
        survivor.close()


def test_files_of_the_single_folder_layout_are_handed_over_once(store):
    legacy = store.root / "incoming" / "inflight-rx-123.dcm"
    legacy.write_bytes(b"from version 0.1")
    assert list(store.abandoned()) == [store.root / "incoming"]
    assert not legacy.exists()
    assert list(store.abandoned()) == []


def test_close_gives_up_the_folder_and_its_lock(tmp_path):
    archive = Archive(tmp_path / "store")
    archive.new_incoming().write_bytes(b"x")
    archive.close()
    assert list((tmp_path / "store" / "incoming").iterdir()) == []


def test_move_study(store):
    other_series = "1.2.826.0.1.3680043.8.498.13"
    for series, sop in ((SERIES, SOP), (SERIES, "1.2.3.1"), (other_series, "1.2.3.2")):
        store.write_new(HELD, STUDY, series, sop, sop.encode())
    store.write_new(HELD, "1.2.99", SERIES, SOP, b"another study")

    report = store.move_study(STUDY, HELD, ARCHIVE)
    assert len(report.moved) == 3
    assert all(p.parts[0] == ARCHIVE for p in report.moved)
    assert store.path_of(ARCHIVE, STUDY, other_series, "1.2.3.2").read_bytes() == b"1.2.3.2"
    assert store.trees_of(STUDY) == (ARCHIVE,)
    assert not (store.root / HELD / STUDY).exists()  # emptied folders are removed
    assert store.exists(HELD, "1.2.99", SERIES, SOP)

    again = store.move_study(STUDY, HELD, ARCHIVE)  # idempotent
    assert again.moved == ()
    assert len(store.study_files(ARCHIVE, STUDY)) == 3


def test_move_study_resumes_after_a_crash_halfway(store, monkeypatch):
    sops = [f"1.2.3.{n}" for n in range(1, 6)]
    for sop in sops:
        store.write_new(HELD, STUDY, SERIES, sop, sop.encode())
    real_replace, calls = os.replace, []

    def crash_on_third(src, dst):
        calls.append(src)
        if len(calls) == 3:
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(archive_module.os, "replace", crash_on_third)
    with pytest.raises((OutOfResources, StorageFailure)):
        store.move_study(STUDY, HELD, REJECTED)
    monkeypatch.setattr(archive_module.os, "replace", real_replace)
    assert len(store.study_files(HELD, STUDY)) == 3 and len(store.study_files(REJECTED, STUDY)) == 2

    report = store.move_study(STUDY, HELD, REJECTED)
    assert len(report.moved) == 3
    assert [p.name for p in store.study_files(REJECTED, STUDY)] == [s + ".dcm" for s in sops]
    assert store.trees_of(STUDY) == (REJECTED,)


def test_move_into_a_tree_that_already_holds_part_of_the_study(store):
    store.write_new(ARCHIVE, STUDY, SERIES, "1.2.3.1", b"archived earlier")
    store.write_new(HELD, STUDY, SERIES, "1.2.3.2", b"held later")
    store.move_study(STUDY, HELD, ARCHIVE)
    assert [p.name for p in store.study_files(ARCHIVE, STUDY)] == ["1.2.3.1.dcm", "1.2.3.2.dcm"]


def test_remove_and_remove_study(store):
    store.write_new(REJECTED, STUDY, SERIES, "1.2.3.1", b"a")
    store.write_new(REJECTED, STUDY, SERIES, "1.2.3.2", b"b")
    assert store.remove(REJECTED, STUDY, SERIES, "1.2.3.1")
    assert not store.remove(REJECTED, STUDY, SERIES, "1.2.3.1")
    assert store.remove_study(REJECTED, STUDY) == 1
    assert not (store.root / REJECTED / STUDY).exists()
    assert tree_files(store) == []


@pytest.mark.parametrize("bad", ["", "..", "../etc", "1.2/3", "1..2", "1.2.", "1.2.a", "1" * 65])
def test_malformed_uids_never_become_paths(store, bad):
    with pytest.raises(InvalidInput, match="UID"):
        store.write_new(ARCHIVE, STUDY, SERIES, bad, b"x")
    with pytest.raises(InvalidInput, match="UID"):
        store.path_of(ARCHIVE, bad, SERIES, SOP)


def test_unknown_tree_is_refused(store):
    with pytest.raises(ValueError, match="unknown tree"):
        store.write_new("incoming", STUDY, SERIES, SOP, b"x")


# -- header reading (store.header) ------------------------------------------------------


def test_read_header_fields(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    request = Dataset()
    request.AccessionNumber = "ACC1001"
    ds = make_instance(
        AccessionNumber="",
        RequestAttributesSequence=Sequence([request]),
        SpecificCharacterSet="ISO_IR 100",
        PatientName="MÜLLER^JOSÉ",
        ImageLaterality="R",
    )
    header = read_header(write_instance(tmp_path / "a.dcm", ds))
    assert header.accession_number == "" and header.request_accession_numbers == ("ACC1001",)
    assert header.patient_name == "MÜLLER^JOSÉ"
    assert (header.patient_id, header.birth_date, header.sex, header.modality) == ("MRN5001", "19800203", "F", "MR")
    assert header.laterality == "R" and header.study_date == "20250310"
    assert header.sop_instance_uid == ds.SOPInstanceUID and header.series_instance_uid == ds.SeriesInstanceUID
    assert header.transfer_syntax_uid == "1.2.840.10008.1.2.1"


def test_read_header_enhanced_frame_laterality(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    anatomy, shared = Dataset(), Dataset()
    anatomy.FrameLaterality = "L"
    shared.FrameAnatomySequence = Sequence([anatomy])
    ds = make_instance(Laterality=None, SharedFunctionalGroupsSequence=Sequence([shared]))
    assert read_header(write_instance(tmp_path / "e.dcm", ds)).laterality == "L"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not dicom at all" * 10, "not a readable DICOM"),
        (b"", "not a readable DICOM"),
    ],
)
def test_read_header_refuses_non_dicom(tmp_path, content, message):
    path = tmp_path / "junk.dcm"
    path.write_bytes(content)
    with pytest.raises(UnreadableInstance, match=message):
        read_header(path)


def test_read_header_refuses_a_truncated_file(tmp_path):
    path = write_instance(tmp_path / "t.dcm", make_instance())
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(UnreadableInstance, match="no .* UID"):
        read_header(path)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"SOPInstanceUID": None}, "no SOP Instance UID"),
        ({"StudyInstanceUID": None}, "no Study Instance UID"),
        ({"SeriesInstanceUID": None}, "no Series Instance UID"),
        ({"StudyInstanceUID": "../../etc"}, "malformed Study Instance UID"),
    ],
)
def test_read_header_refuses_missing_or_malformed_uids(tmp_path, overrides, message):
    path = write_instance(tmp_path / "x.dcm", make_instance(**overrides))
    with pytest.raises(UnreadableInstance, match=message):
        read_header(path)


def test_read_header_of_a_large_file_skips_pixel_data(tmp_path):
    """512 MiB of pixel data (a sparse file, so the test is cheap) must not be read."""
    ds = make_instance(Rows=16384, Columns=16384)
    del ds.PixelData
    path = write_instance(tmp_path / "large.dcm", ds)
    length = 16384 * 16384 * 2
    with open(path, "r+b") as f:
        f.seek(0, os.SEEK_END)
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        f.truncate(f.tell() + length)
    assert path.stat().st_size > length

    started = time.perf_counter()
    header = read_header(path)
    elapsed = time.perf_counter() - started
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert elapsed < 0.5, f"reading the header took {elapsed:.3f}s; pixel data must be skipped"


def test_sync_ahead_hashes_and_syncs_on_its_threads_and_write_new_does_neither_again(store, monkeypatch):
    ds = make_instance()
    received = write_instance(store.new_incoming(), ds)
    data = received.read_bytes()
    real_digest, real_fsync_file, threads = archive_module.file_digest, archive_module.fsync_file, []

    def digest(path, *, sync=False):
        threads.append(("hash", threading.current_thread().name))
        return real_digest(path, sync=sync)

    def fsync_file(path):
        threads.append(("fsync", threading.current_thread().name))
        return real_fsync_file(path)

    monkeypatch.setattr(archive_module, "file_digest", digest)
    monkeypatch.setattr(archive_module, "fsync_file", fsync_file)
    synced = store.sync_ahead(received)
    assert synced.result() == (len(data), hashlib.sha256(data).hexdigest())
    stored = store.write_new(HELD, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, received, synced=synced)
    assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert sorted(kind for kind, _ in threads) == ["fsync", "hash"]
    assert all(name.startswith("archive-sync") for _, name in threads)


def test_a_cancelled_sync_ahead_runs_neither_and_waiting_on_it_returns(store):
    blocker = threading.Event()
    store.sync_ahead(store.new_incoming()).result()  # the threads exist
    busy = [store._syncing.submit(blocker.wait) for _ in range(archive_module.SYNC_THREADS)]
    ahead = store.sync_ahead(store.new_incoming())
    assert ahead.cancel() is True  # both still queued behind the busy threads
    ahead.wait()
    blocker.set()
    for future in busy:
        future.result(timeout=10)


def test_waiting_on_a_sync_ahead_that_has_started_waits_for_its_end(store, monkeypatch):
    received = write_instance(store.new_incoming(), make_instance())
    started, release, ended = threading.Event(), threading.Event(), []
    real_fsync_file = archive_module.fsync_file

    def held_fsync(path):
        started.set()
        release.wait(10)
        real_fsync_file(path)
        ended.append(path)

    monkeypatch.setattr(archive_module, "fsync_file", held_fsync)
    ahead = store.sync_ahead(received)
    assert started.wait(10)
    assert ahead.cancel() is False  # the fsync runs: it cannot be cancelled
    waiter = threading.Thread(target=ahead.wait)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and ended == []  # still waiting for the fsync
    release.set()
    waiter.join(10)
    assert not waiter.is_alive() and ended == [received]


def test_a_file_its_writer_hashed_is_only_synced_not_read_again(store, monkeypatch):
    """sync_ahead(path, written): the size and SHA-256 its writer computed go in; the file is fsynced, not hashed."""
    data = b"the bytes the receiver wrote" * 1000
    received = store.new_incoming()
    received.write_bytes(data)
    inode = received.stat().st_ino
    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(archive_module, "file_digest", lambda *a, **k: pytest.fail("the file was read again"))
    monkeypatch.setattr(archive_module.os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd)))
    written = (len(data), hashlib.sha256(data).hexdigest())
    stored = store.write_new(ARCHIVE, STUDY, SERIES, SOP, received, synced=store.sync_ahead(received, written))
    assert (stored.size, stored.sha256) == written
    assert inode in synced and (store.root / stored.path).read_bytes() == data


@pytest.mark.parametrize("difference", [-1, 1])
def test_a_file_not_the_size_its_writer_wrote_is_refused_and_nothing_is_left(store, difference):
    data = b"received"
    received = store.new_incoming()
    received.write_bytes(data)
    written = (len(data) + difference, hashlib.sha256(data).hexdigest())
    with pytest.raises(StorageFailure, match=f"holds {len(data)} bytes where {len(data) + difference} were written"):
        store.write_new(ARCHIVE, STUDY, SERIES, SOP, received, synced=store.sync_ahead(received, written))
    assert incoming_files(store) == [] and tree_files(store) == []


def test_sync_ahead_of_a_hashed_file_still_syncs_once_the_archive_is_closing(tmp_path, monkeypatch):
    archive = Archive(tmp_path / "store")
    received = archive.new_incoming()
    archive.sync_ahead(received).result()  # the thread pool exists
    archive._syncing.shutdown()
    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(archive_module.os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd)))
    written = (0, hashlib.sha256(b"").hexdigest())
    assert archive.sync_ahead(received, written).result() == written
    assert synced == [received.stat().st_ino]
    archive._syncing = None  # closed meanwhile: done here as well
    assert archive.sync_ahead(received, written).result() == written and len(synced) == 2
    archive.close()
