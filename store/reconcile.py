"""Reconciliation of one received instance against its RIS order (rule 3 of docs/rules.md).

The instance is matched to its order by Accession Number (0008,0050); the caller looks the
order up with :func:`accession_of` and passes it in, with whether an auth was valid on the
study date (the gating rules decide that). :func:`reconcile` is pure: it returns every
failed check as a :class:`Finding` holding the instance's value, the order's value and a
sentence for the technologist. Which findings hold the study is the caller's setting
(``hold_codes``); by default every code holds except ``STUDY_UID_MISMATCH``.

Messages name the accession number and, where useful, the modality or side, but never the
patient's name, ID or birth date: those are in ``instance_value`` and ``order_value``, shown
side by side to the operator, and must not end up in an INFO log line by accident.

Rule 7 adds two findings about duplicates. They need what is already archived, so the
caller passes :class:`PriorStudy` rows in (``priors``): the archived studies of the
instance's order and of the patient's other orders for the same CPT code, looked up once
per study. ``DUPLICATE_STUDY`` (holds by default): the order already has an archived study
with another Study Instance UID, named in the finding. ``POSSIBLE_DUPLICATE_ORDER`` (warns
by default): another order of the same patient and CPT code has an archived study of the
same day, so the exam may have been ordered, and billed, twice.

The study is the unit (:func:`study_state`): once any instance of a study holds, the study
is held, and later instances of it are held too.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass

import pydicom.uid as uids

from store.header import InstanceHeader
from store.states import ARCHIVED, HELD, PURGED, REJECTED
from worklist.orders import Order

ACCESSION_MISSING = "ACCESSION_MISSING"
ACCESSION_UNKNOWN = "ACCESSION_UNKNOWN"
PATIENT_ID_MISMATCH = "PATIENT_ID_MISMATCH"
PATIENT_NAME_MISMATCH = "PATIENT_NAME_MISMATCH"
BIRTH_DATE_MISMATCH = "BIRTH_DATE_MISMATCH"
SEX_MISMATCH = "SEX_MISMATCH"
MODALITY_MISMATCH = "MODALITY_MISMATCH"
LATERALITY_MISMATCH = "LATERALITY_MISMATCH"
STUDY_UID_MISMATCH = "STUDY_UID_MISMATCH"
ORDER_NOT_AUTHORIZED = "ORDER_NOT_AUTHORIZED"
ORDER_CANCELLED = "ORDER_CANCELLED"
# Rule 7, duplicates.
DUPLICATE_STUDY = "DUPLICATE_STUDY"
POSSIBLE_DUPLICATE_ORDER = "POSSIBLE_DUPLICATE_ORDER"

#: Every finding code, in the order of the rule 3 table of docs/rules.md (findings come in this order).
CODES = (
    ACCESSION_MISSING,
    ACCESSION_UNKNOWN,
    PATIENT_ID_MISMATCH,
    PATIENT_NAME_MISMATCH,
    BIRTH_DATE_MISMATCH,
    SEX_MISMATCH,
    MODALITY_MISMATCH,
    LATERALITY_MISMATCH,
    STUDY_UID_MISMATCH,
    ORDER_NOT_AUTHORIZED,
    ORDER_CANCELLED,
    DUPLICATE_STUDY,
    POSSIBLE_DUPLICATE_ORDER,
)
ALL_CODES = frozenset(CODES)
#: The codes that only warn unless settings say otherwise (``reconcile.warn_codes``).
DEFAULT_WARN_CODES = frozenset({STUDY_UID_MISMATCH, POSSIBLE_DUPLICATE_ORDER})
#: By default every code holds the study but STUDY_UID_MISMATCH and POSSIBLE_DUPLICATE_ORDER, which only warn.
DEFAULT_HOLD_CODES = ALL_CODES - DEFAULT_WARN_CODES

#: Where the accession number used for matching came from.
FROM_ACCESSION_NUMBER = "AccessionNumber"
FROM_REQUEST_ATTRIBUTES = "RequestAttributesSequence"

#: Order statuses under which images should not have been acquired.
CANCELLED_STATUSES = frozenset({"cancelled", "discontinued"})


#: Modalities (0008,0060) of objects that are not images of the patient, and so are exempt
#: from MODALITY_MISMATCH: reports, presentation states, key object selections, documents,
#: registrations, segmentations, value mappings, plans, fiducials, RT objects, waveforms,
#: assessments and 3D models (PS3.3 C.7.3.1.1.1 defined terms).
NON_IMAGE_MODALITIES = frozenset(
    {
        "SR", "PR", "KO", "DOC", "REG", "SEG", "RWV", "PLAN", "FID", "ASMT", "M3D",
        "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "ECG", "HD", "AU",
    }
)  # fmt: skip

#: SOP classes (PS3.4 B.5) of non-image objects, exempt from MODALITY_MISMATCH whatever
#: modality they carry: a dose SR or a presentation state often repeats the image's.
NON_IMAGE_SOP_CLASSES = frozenset(
    {
        uids.BasicTextSRStorage, uids.EnhancedSRStorage, uids.ComprehensiveSRStorage,
        uids.Comprehensive3DSRStorage, uids.ExtensibleSRStorage,
        uids.KeyObjectSelectionDocumentStorage, uids.XRayRadiationDoseSRStorage,
        uids.EnhancedXRayRadiationDoseSRStorage, uids.RadiopharmaceuticalRadiationDoseSRStorage,
        uids.PatientRadiationDoseSRStorage, uids.AcquisitionContextSRStorage,
        uids.MammographyCADSRStorage, uids.ChestCADSRStorage, uids.ColonCADSRStorage,
        uids.ProcedureLogStorage, uids.ImplantationPlanSRStorage,
        uids.SimplifiedAdultEchoSRStorage, uids.PlannedImagingAgentAdministrationSRStorage,
        uids.PerformedImagingAgentAdministrationSRStorage, uids.WaveformAnnotationSRStorage,
        uids.GrayscaleSoftcopyPresentationStateStorage,
        uids.ColorSoftcopyPresentationStateStorage,
        uids.PseudoColorSoftcopyPresentationStateStorage,
        uids.BlendingSoftcopyPresentationStateStorage,
        uids.XAXRFGrayscaleSoftcopyPresentationStateStorage,
        uids.GrayscalePlanarMPRVolumetricPresentationStateStorage,
        uids.CompositingPlanarMPRVolumetricPresentationStateStorage,
        uids.AdvancedBlendingPresentationStateStorage,
        uids.VolumeRenderingVolumetricPresentationStateStorage,
        uids.SegmentedVolumeRenderingVolumetricPresentationStateStorage,
        uids.MultipleVolumeRenderingVolumetricPresentationStateStorage,
        uids.VariableModalityLUTSoftcopyPresentationStateStorage,
        uids.SegmentationStorage, uids.SurfaceSegmentationStorage,
        uids.SpatialRegistrationStorage, uids.DeformableSpatialRegistrationStorage,
        uids.SpatialFiducialsStorage, uids.RealWorldValueMappingStorage,
        uids.EncapsulatedPDFStorage, uids.EncapsulatedCDAStorage, uids.EncapsulatedSTLStorage,
        uids.EncapsulatedOBJStorage, uids.EncapsulatedMTLStorage, uids.RawDataStorage,
        uids.RTStructureSetStorage, uids.RTPlanStorage, uids.RTIonPlanStorage,
        uids.RTBeamsTreatmentRecordStorage, uids.RTDoseStorage,
        uids.BasicStructuredDisplayStorage, uids.ContentAssessmentResultsStorage,
        uids.TwelveLeadECGWaveformStorage, uids.GeneralECGWaveformStorage,
        uids.BasicVoiceAudioWaveformStorage, uids.HemodynamicWaveformStorage,
        uids.MicroscopyBulkSimpleAnnotationsStorage,
    }
)  # fmt: skip

#: Hybrid exams scheduled under one modality whose images legitimately carry another:
#: PET/CT and PET/MR (ordered as PT) and SPECT/CT (ordered as NM) send CT or MR series
#: for attenuation correction and localisation. Holding every such study would be noise.
HYBRID_COMPANIONS = {"PT": frozenset({"CT", "MR"}), "NM": frozenset({"CT"})}

_KNOWN_SEXES = frozenset({"M", "F", "O"})
_SIDES = {"L": "left", "R": "right"}
_LEGACY_DA = re.compile(r"(\d{4})\.(\d{2})\.(\d{2})")  # ACR-NEMA dates, still met


@dataclass(frozen=True)
class Finding:
    """One failed check: the code, the instance's and the order's values, and what to do."""

    code: str
    instance_value: str
    order_value: str
    message: str


@dataclass(frozen=True)
class PriorStudy:
    """An archived study that a new one may duplicate (rule 7): its UID, the order it is linked
    to, that order's patient and CPT code, its Study Date (YYYYMMDD as received) and when it
    was first received."""

    study_instance_uid: str
    order_accession: str
    patient_id: str
    cpt: str
    study_date: str
    first_received_at: dt.datetime


@dataclass(frozen=True)
class Reconciliation:
    """Every finding for one instance, the accession number used and where it came from.

    ``accession_source`` is :data:`FROM_ACCESSION_NUMBER`, :data:`FROM_REQUEST_ATTRIBUTES`
    or ``""`` when the instance carries no accession number at all.
    """

    findings: tuple[Finding, ...]
    accession_used: str
    accession_source: str
    hold_codes: frozenset[str] = DEFAULT_HOLD_CODES

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(f.code for f in self.findings)

    @property
    def hold_findings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.code in self.hold_codes)

    @property
    def warn_findings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.code not in self.hold_codes)

    @property
    def holds(self) -> bool:
        """True when any finding's code holds the study."""
        return any(f.code in self.hold_codes for f in self.findings)


def hold_codes_from_warn_codes(warn_codes: frozenset[str] | set[str]) -> frozenset[str]:
    """The hold set for the ``reconcile.warn_codes`` setting: every other code holds."""
    return ALL_CODES - frozenset(warn_codes)


def accession_of(header: InstanceHeader) -> str:
    """The accession number to look the order up by (empty when the instance has none).

    Accession Number (0008,0050) wins; when it is empty, the first non-empty Accession
    Number in Request Attributes Sequence (0040,0275) is used (PS3.3 C.4.13), as modalities
    that fill only the request attributes from the worklist do.
    """
    return _choose_accession(header)[0]


def reconcile(
    header: InstanceHeader,
    order: Order | None,
    *,
    order_authorized: bool,
    hold_codes: frozenset[str] = DEFAULT_HOLD_CODES,
    priors: tuple[PriorStudy, ...] = (),
) -> Reconciliation:
    """Check one instance against the order found by :func:`accession_of` (rule 3 of docs/rules.md).

    ``order`` is None when no order has that accession number. ``order_authorized`` is False
    when the order needs an auth and none was valid on the study date. Without an accession
    number or an order there is nothing to compare, so only ACCESSION_MISSING or
    ACCESSION_UNKNOWN is reported. ``priors`` are the archived studies the duplicate checks
    compare with (:class:`PriorStudy`); none, no duplicate findings.
    """
    accession, source = _choose_accession(header)

    def result(*findings: Finding | None) -> Reconciliation:
        kept = tuple(f for f in findings if f is not None)
        return Reconciliation(kept, accession, source, frozenset(hold_codes))

    if not accession:
        return result(
            Finding(
                ACCESSION_MISSING, "", "",
                "The images carry no accession number, so they cannot be matched to an order. "
                "Find the order for this exam and correct the images from it, or reject them "
                "if they were sent by mistake.",
            )
        )  # fmt: skip
    if order is None:
        return result(
            Finding(
                ACCESSION_UNKNOWN, accession, "",
                f"No order has accession number {accession}. Check the number entered at the "
                "console, then correct the images from the right order (have it entered in "
                "the RIS first if it is missing), or reject them.",
            )
        )  # fmt: skip
    return result(
        _check_patient_id(header, order),
        _check_patient_name(header, order),
        _check_birth_date(header, order),
        _check_sex(header, order),
        _check_modality(header, order),
        _check_laterality(header, order),
        _check_study_uid(header, order),
        None if order_authorized else _not_authorized(header, order),
        _check_cancelled(order),
        _check_duplicate_study(header, order, priors),
        _check_possible_duplicate_order(header, order, priors),
    )


def study_state(previous_state: str | None, reconciliation: Reconciliation) -> str:
    """The study's state once this instance is filed: ``'held'`` or ``'archived'``.

    The study is the unit (rule 3 of docs/rules.md): a held study stays held whatever the new instance
    is, and an instance that holds makes its study held. A study archived earlier that gets
    a holding instance becomes held as a whole: the store files the new instance in the held
    area and moves the files already archived there with it (every file of a study lives in
    the tree of its state, :mod:`store.placement`), so the study is reviewed as one until an
    operator releases, corrects or rejects it.
    A new instance of a rejected or purged study is held too: someone already judged that
    study, so it returns to a person rather than being archived or dropped silently.
    """
    if previous_state not in (None, ARCHIVED, HELD, REJECTED, PURGED):
        raise ValueError(
            f"unknown study state {previous_state!r}; expected one of "
            f"{ARCHIVED}, {HELD}, {REJECTED}, {PURGED} or None for a new study"
        )
    if previous_state in (None, ARCHIVED) and not reconciliation.holds:
        return ARCHIVED
    return HELD


def normalised_name(person_name: str) -> tuple[str, str]:
    """(family, given) of a PN value, compared as rule 3 says.

    Only the alphabetic component group (before the first ``=``, PS3.5 6.2.1) is used, and
    only its family and given components: middle name, prefix and suffix are ignored,
    because the rule compares family and given names and consoles often drop the rest.
    Each component is case-folded, stripped of accents (consoles often cannot type them)
    and reduced to its letters and digits, so spaces, ``.``, ``,``, ``-`` and apostrophes
    make no difference: ``O'Brien-Smith`` equals ``OBRIEN SMITH``.
    """
    components = person_name.split("=", 1)[0].split("^")
    family = components[0] if components else ""
    given = components[1] if len(components) > 1 else ""
    return _fold(family), _fold(given)


def _fold(component: str) -> str:
    decomposed = unicodedata.normalize("NFKD", component.casefold())
    return "".join(ch for ch in decomposed if ch.isalnum())


def _choose_accession(header: InstanceHeader) -> tuple[str, str]:
    if header.accession_number.strip():
        return header.accession_number.strip(), FROM_ACCESSION_NUMBER
    for number in header.request_accession_numbers:
        if number.strip():
            return number.strip(), FROM_REQUEST_ATTRIBUTES
    return "", ""


def _check_patient_id(header: InstanceHeader, order: Order) -> Finding | None:
    if header.patient_id.strip() == order.patient_id.strip():
        return None
    return Finding(
        PATIENT_ID_MISMATCH, header.patient_id, order.patient_id,
        f"The patient ID on the images is not the one on order {order.accession_number}. "
        "Make sure the right patient was scanned, then correct the images from the order or "
        "reassign them to the patient's own order.",
    )  # fmt: skip


def _check_patient_name(header: InstanceHeader, order: Order) -> Finding | None:
    if normalised_name(header.patient_name) == normalised_name(order.patient_name):
        return None
    return Finding(
        PATIENT_NAME_MISMATCH, header.patient_name, order.patient_name,
        f"The patient's family or given name on the images differs from order "
        f"{order.accession_number}. Compare the two; if it is the same patient, correct the "
        "images from the order, otherwise reassign them to the right order.",
    )  # fmt: skip


def _check_birth_date(header: InstanceHeader, order: Order) -> Finding | None:
    expected = order.birth_date
    order_value = f"{expected.year:04d}{expected.month:02d}{expected.day:02d}"
    value = header.birth_date.strip()
    legacy = _LEGACY_DA.fullmatch(value)
    if (legacy and "".join(legacy.groups()) == order_value) or value == order_value:
        return None
    return Finding(
        BIRTH_DATE_MISMATCH, header.birth_date, order_value,
        f"The birth date on the images {'is missing' if not value else 'differs'} from "
        f"order {order.accession_number}. Confirm the patient's birth date, then correct the "
        "images from the order.",
    )  # fmt: skip


def _check_sex(header: InstanceHeader, order: Order) -> Finding | None:
    instance, ordered = header.sex.strip().upper(), order.sex.strip().upper()
    if instance not in _KNOWN_SEXES or ordered not in _KNOWN_SEXES or instance == ordered:
        return None
    return Finding(
        SEX_MISMATCH, header.sex, order.sex,
        f"The patient sex on the images differs from order {order.accession_number}. "
        "Confirm it against the patient record, then correct the images from the order.",
    )  # fmt: skip


def _check_modality(header: InstanceHeader, order: Order) -> Finding | None:
    instance = header.modality.strip().upper()
    if instance in NON_IMAGE_MODALITIES or header.sop_class_uid in NON_IMAGE_SOP_CLASSES:
        return None
    scheduled = {m.strip().upper() for m in order.modality.split("\\") if m.strip()}
    allowed = scheduled.union(*(HYBRID_COMPANIONS.get(m, frozenset()) for m in scheduled))
    if instance in allowed:
        return None
    return Finding(
        MODALITY_MISMATCH, header.modality, order.modality,
        f"These {instance or 'unlabelled'} images were sent for order {order.accession_number}, "
        f"which is scheduled as {order.modality}. Check that the right order was picked at "
        "the console; reassign the images to the right order, or reject them.",
    )  # fmt: skip


def _check_laterality(header: InstanceHeader, order: Order) -> Finding | None:
    instance, ordered = header.laterality.strip().upper(), (order.laterality or "").upper()
    if instance not in _SIDES or ordered not in _SIDES or instance == ordered:
        return None
    return Finding(
        LATERALITY_MISMATCH, header.laterality, order.laterality or "",
        f"The images are marked {_SIDES[instance]} but order {order.accession_number} is for "
        f"the {_SIDES[ordered]} side. Check which side was imaged: if the order is wrong, "
        "have the RIS fix it or reassign the images; if the images are marked wrongly, fix "
        "them at the modality and send them again.",
    )  # fmt: skip


def _check_study_uid(header: InstanceHeader, order: Order) -> Finding | None:
    if not order.study_instance_uid or header.study_instance_uid == order.study_instance_uid:
        return None
    return Finding(
        STUDY_UID_MISMATCH, header.study_instance_uid, order.study_instance_uid,
        f"The study has another Study Instance UID than the one assigned to order "
        f"{order.accession_number}. If this repeats, check that the modality takes the "
        "Study Instance UID from the worklist.",
    )  # fmt: skip


def _not_authorized(header: InstanceHeader, order: Order) -> Finding:
    return Finding(
        ORDER_NOT_AUTHORIZED, header.study_date, order.cpt,
        f"Order {order.accession_number} (CPT {order.cpt}) needs a prior authorization and "
        "none was valid on the study date. Obtain or extend the authorization with the payer "
        "before releasing the study; without one the claim will be denied.",
    )  # fmt: skip


def _check_cancelled(order: Order) -> Finding | None:
    if order.status not in CANCELLED_STATUSES:
        return None
    return Finding(
        ORDER_CANCELLED, "", order.status,
        f"Order {order.accession_number} is {order.status} in the RIS, yet images arrived "
        "for it. Check whether the exam was meant to be done: have the order reinstated, "
        "reassign the images to another order, or reject them.",
    )  # fmt: skip


def _day(study_date: str) -> str:
    """A Study Date as compared: digits only (ACR-NEMA ``YYYY.MM.DD`` is still met)."""
    return study_date.strip().replace(".", "")


def _check_duplicate_study(header: InstanceHeader, order: Order, priors: tuple[PriorStudy, ...]) -> Finding | None:
    earlier = sorted((p for p in priors if p.order_accession == order.accession_number
                      and p.study_instance_uid != header.study_instance_uid),
                     key=lambda p: (p.first_received_at, p.study_instance_uid))
    if not earlier:
        return None
    first = earlier[0]
    return Finding(
        DUPLICATE_STUDY, header.study_instance_uid, first.study_instance_uid,
        f"Order {order.accession_number} already has an archived study, {first.study_instance_uid} (received "
        f"{first.first_received_at:%Y-%m-%d %H:%M}); this is a second study for it. If it is a repeat of the "
        "same exam, reject it or have the RIS order the repeat; if it belongs to another exam, reassign it "
        "to that order.",
    )  # fmt: skip


def _check_possible_duplicate_order(header: InstanceHeader, order: Order,
                                    priors: tuple[PriorStudy, ...]) -> Finding | None:
    day = _day(header.study_date)
    if not day:
        return None
    same = sorted((p for p in priors if p.order_accession and p.order_accession != order.accession_number
                   and p.patient_id == order.patient_id and p.cpt == order.cpt and _day(p.study_date) == day),
                  key=lambda p: (p.first_received_at, p.study_instance_uid))
    if not same:
        return None
    other = same[0]
    return Finding(
        POSSIBLE_DUPLICATE_ORDER, header.study_instance_uid, other.order_accession,
        f"Order {other.order_accession} of the same patient, for the same CPT {order.cpt} on the same day, "
        f"already has an archived study ({other.study_instance_uid}); order {order.accession_number} may "
        "duplicate it. Check with the RIS whether the exam was ordered twice and cancel the extra order "
        "before it is billed.",
    )  # fmt: skip
