"""Header read speed: the native reader against the pydicom path, per received instance.

    python3 bench/header.py [--kib K] [--reads N] [--runs R]

Two synthetic 512 KiB (``--kib``) CT instances in Explicit VR Little Endian, written as
bench/store.py writes its instances (its ``header`` and ``write_instance``, then Pixel Data
of the rest of the size):

- ``store.py``: bench/store.py's header as it is (about 30 elements), Modality CT;
- ``ct``: the same with about 90 more elements a CT scanner writes before its pixel data
  (acquisition, equipment, position, VOI, a private block, a Referenced Image Sequence of
  undefined length), so that the walk has a realistic number of elements to skip.

For each file it prints the median over R runs (default 7) of the time per header of N
reads (default 2000) of: ``native`` (:func:`store.header_native.native_header`),
``pydicom`` (the pydicom path, ``dcmread`` + ``_header_of``, which read_header was before the
native reader) and ``read_header`` (the entry point: native, then the UID checks), and
checks that the native header equals the pydicom one. The file stays in the page cache, as
a just-received instance does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path.pop(0)  # run as a script: bench/http.py would shadow the standard library's http
sys.path.insert(0, str(ROOT))

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import CTImageStorage, generate_uid  # noqa: E402

from bench.store import header, write_instance  # noqa: E402
from store.header import _pydicom_header, read_header  # noqa: E402
from store.header_native import native_header  # noqa: E402


def ct_header(rich: bool, side: int) -> Dataset:
    ds = header(generate_uid(), generate_uid(), side, side, 1)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.Modality = "CT"
    if not rich:
        return ds
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = "20261201", "093012"
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20261201"
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "093012.123456"
    ds.Manufacturer, ds.InstitutionName = "SYNTHETIC", "GENERAL HOSPITAL"
    ds.InstitutionAddress = "1 MAIN STREET"
    ds.ReferringPhysicianName = "SMITH^JOHN^^DR"
    ds.StationName, ds.StudyDescription, ds.SeriesDescription = "CT01", "CT HEAD W/O", "AXIAL 5MM"
    ds.InstitutionalDepartmentName, ds.OperatorsName = "RADIOLOGY", "TECH^ONE"
    ds.ManufacturerModelName = "SCANNER 64"
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CTImageStorage, generate_uid()
    ds.ReferencedImageSequence = Sequence([ref, ref])
    ds.ReferencedImageSequence.is_undefined_length = True
    ds.PatientAge, ds.PatientSize, ds.PatientWeight = "046Y", "1.70", "70"
    ds.ScanOptions, ds.SliceThickness, ds.KVP = "HELICAL MODE", "5", "120"
    ds.DataCollectionDiameter, ds.DeviceSerialNumber, ds.SoftwareVersions = "500", "12345", "1.0"
    ds.ProtocolName, ds.ReconstructionDiameter = "HEAD", "250"
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = "949", "541"
    ds.GantryDetectorTilt, ds.TableHeight, ds.RotationDirection = "0", "150", "CW"
    ds.ExposureTime, ds.XRayTubeCurrent, ds.Exposure = "1000", "300", "300"
    ds.FilterType, ds.GeneratorPower, ds.FocalSpots = "BODY", "36", "1.2"
    ds.ConvolutionKernel, ds.PatientPosition = "STANDARD", "HFS"
    ds.RevolutionTime, ds.SingleCollimationWidth, ds.TotalCollimationWidth = 1.0, 0.625, 40.0
    ds.TableSpeed, ds.TableFeedPerRotation, ds.SpiralPitchFactor = 39.37, 39.37, 0.984
    ds.StudyID, ds.AcquisitionNumber = "1", "1"
    ds.ImagePositionPatient = ["-125", "-125", "-50"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = generate_uid(), "OM"
    ds.SliceLocation = "-50"
    ds.add_new(0x00090010, "LO", "SYNTHETIC PRIVATE")
    for n in range(20):
        ds.add_new(0x00091000 + n, "LO", f"PRIVATE VALUE {n}")
    ds.PixelSpacing = ["0.488", "0.488"]
    ds.WindowCenter, ds.WindowWidth = ["40", "400"], ["80", "1500"]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.LossyImageCompression = "00"
    return ds


def make(folder: Path, name: str, rich: bool, kib: int) -> Path:
    side = int((kib * 1024 // 2) ** 0.5)
    path = folder / f"{name}.dcm"
    write_instance(path, ct_header(rich, side), side * side * 2, os.urandom(side * side * 2))
    return path


def per_read_ms(read, path: Path, reads: int, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(reads):
            read(path)
        times.append((time.perf_counter() - t0) / reads * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kib", type=int, default=512, help="size of each instance in KiB (default 512)")
    parser.add_argument("--reads", type=int, default=2000, help="reads per run (default 2000)")
    parser.add_argument("--runs", type=int, default=7, help="runs; the median is printed (default 7)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for name, rich in (("store.py", False), ("ct", True)):
            path = make(Path(folder), name.replace(".", "_"), rich, args.kib)
            native, reference = native_header(path), _pydicom_header(path)
            if native is None or native != reference:
                sys.exit(f"{name}: the native header is {native!r}, the pydicom path gives {reference!r}")
            figures = {label: per_read_ms(read, path, args.reads, args.runs)
                       for label, read in (("native", native_header), ("pydicom", _pydicom_header),
                                           ("read_header", read_header))}
            print(f"{name:9s} {path.stat().st_size // 1024} KiB: "
                  + ", ".join(f"{label} {ms:.4f} ms" for label, ms in figures.items())
                  + f"; pydicom/native {figures['pydicom'] / figures['native']:.1f}x")


if __name__ == "__main__":
    main()
