"""Synthetic DICOM instances and RIS orders for tests: valid, small, and all made up.

``make_instance()`` builds an MR Image Storage instance (PS3.3 A.4) for patient MRN5001,
DOE^JANE^Q, born 1980-02-03, F, accession ACC1001, with fresh UIDs and 8x8 16-bit pixel
data. ``make_order()`` builds the RIS order those defaults match. Override any attribute by
its pydicom keyword; ``None`` removes it.

    ds = make_instance(AccessionNumber="", Modality="CT")
    path = write_instance(tmp_path / "x.dcm", ds)
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, PYDICOM_IMPLEMENTATION_UID, generate_uid

from worklist.orders import Order

PATIENT_ID = "MRN5001"
PATIENT_NAME = "DOE^JANE^Q"
BIRTH_DATE = "19800203"
SEX = "F"
ACCESSION = "ACC1001"
MODALITY = "MR"
STUDY_DATE = "20250310"


def make_instance(*, transfer_syntax_uid: str = ExplicitVRLittleEndian, **overrides: Any) -> Dataset:
    """A valid MR image dataset with file meta; keyword overrides, ``None`` deletes."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = STUDY_DATE
    ds.StudyTime = "101500"
    ds.AccessionNumber = ACCESSION
    ds.Modality = MODALITY
    ds.Manufacturer = "SYNTHETIC"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "MRI BRAIN W/O CONTRAST"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    ds.PatientSex = SEX
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.EchoTime = "10"
    ds.RepetitionTime = "500"
    ds.EchoTrainLength = "1"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = "1"
    ds.InstanceNumber = "1"
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = ["0", "0", "0"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = ["1", "1"]
    ds.SliceThickness = "5"
    ds.Laterality = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 8
    ds.Columns = 8
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(128))
    for keyword, value in overrides.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", MRImageStorage)
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def write_instance(path: str | os.PathLike[str], ds: Dataset) -> Path:
    """Write ``ds`` as a Part 10 file (preamble, DICM, file meta) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_order(**overrides: Any) -> Order:
    """The RIS order that ``make_instance()``'s defaults match; keyword overrides."""
    values: dict[str, Any] = dict(
        accession_number=ACCESSION,
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        birth_date=dt.date(1980, 2, 3),
        sex=SEX,
        cpt="70551",
        modality=MODALITY,
        scheduled_start=dt.datetime(2025, 3, 10, 10, 0),
        station_ae="MR1",
        ordering_npi="1234567893",
        facility_npi="1245319599",
        payer_id="ACME",
        description="MRI BRAIN W/O CONTRAST",
        body_part="BRAIN",
    )
    values.update(overrides)
    return Order(**values)
