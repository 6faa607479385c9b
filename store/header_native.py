"""The header of a received instance read from its bytes, without building a pydicom dataset.

:func:`native_header` gives the :class:`~store.header.InstanceHeader` that
:func:`store.header.read_header`'s pydicom path gives, for the files where it can be sure of
it, and ``None`` for every other file, which then goes to the pydicom path (the reference).

The Part 10 file (PS3.10 7.1) is read from one buffered read of its first :data:`BUFFER`
bytes, extended only when the header is longer: the 128-byte preamble, ``DICM``, the File
Meta Information (group 0002, Explicit VR Little Endian), then the dataset in the transfer
syntax the meta names (Implicit VR Little Endian, Explicit VR Little or Big Endian, or an
encapsulated syntax, whose dataset is Explicit VR Little Endian, PS3.5 A.4). The top-level
elements are walked in order up to the first of Float, Double Float or Pixel Data
(7FE0,0008/0009/0010), where pydicom's ``stop_before_pixels`` stops: the values of the
elements in :data:`~store.header.HEADER_TAGS` are kept, every other value of defined length
is skipped by its length, and an undefined-length sequence (a private one, Referenced Image
Sequence) is walked item by item as pydicom parses it, to find where it ends.

``None`` (the pydicom path decides, errors included) whenever the result might differ:

- any structural surprise: no preamble or ``DICM``, no Transfer Syntax UID, a file meta or
  a dataset that pydicom would read otherwise than its syntax says (an Implicit VR first
  element in an Explicit VR dataset or the reverse, a Command Set group 0000), a VR that is
  not one of PS3.5 Table 6.2-1, tags not strictly ascending, a length past the end of the
  file or of its item, an undefined length other than a sequence's, an item or delimiter
  out of place, nesting deeper than :data:`MAX_DEPTH`, a file cut inside an element;
- Deflated Explicit VR Little Endian (pydicom inflates it) and any syntax not listed above;
- a wanted attribute with another VR than the dictionary's, or of undefined length;
- Shared Functional Groups Sequence present (pydicom reads it); a Request Attributes
  Sequence that is not an SQ, or whose item has a Specific Character Set of its own or an
  Accession Number that is not a defined-length SH (its items' Accession Numbers are read
  here, with the dataset's character set, as pydicom reads them);
- a Specific Character Set that is not printable ASCII or where printable ASCII does not
  keep its meaning (:func:`store.header._ascii_compatible`: JIS X 0201);
- a byte outside printable ASCII (and NUL) in a value of a VR the character set does not
  apply to (UI, CS, DA, ...); in an SH, LO or PN value, unless the character set is one of
  :data:`_CODECS` (one codec, no ISO 2022 code extensions: the default repertoire, ISO 8859,
  UTF-8, GB18030, GBK), the value has no ESC and decodes without error; then it is decoded
  as pydicom decodes it (the whole value with that codec, then split at backslashes);
- a printable Person Name with a NUL before its trailing padding;
- pydicom configured otherwise than by default where it changes what is read.

Text is taken as :func:`store.header._raw_text` takes it (each value stripped of spaces and
NULs, values joined by a backslash). Person Name is taken as pydicom's ``str(PersonName)``
gives it: trailing spaces and NULs of the whole value removed, then for each value the
empty component groups at the end dropped (``DOE^J==`` is ``DOE^J``; trailing ``^`` stay),
then stripped of spaces.
"""

from __future__ import annotations

import os
import struct

from pydicom import config
from pydicom.charset import python_encoding
from pydicom.filereader import ENCODED_VR
from pydicom.uid import AllTransferSyntaxes, PrivateTransferSyntaxes
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

try:  # the dictionary look-up pydicom's reader makes for an undefined length (with repeaters)
    from pydicom.datadict import _dictionary_vr_fast as _dictionary_vr
except ImportError:  # pragma: no cover - another pydicom
    from pydicom.datadict import dictionary_VR as _dictionary_vr

from store.header import HEADER_KEYWORDS, InstanceHeader, _TAG_OF, _VR_OF

#: The first read; a header longer than this (rare: big private blocks) is read on. The
#: time per header is the same from 4 to 64 KiB (bench/header.py).
BUFFER = 64 * 1024
#: Sequences nested deeper than this are left to pydicom.
MAX_DEPTH = 64

_LONG_VRS = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32 if len(vr) == 2)
_SHORT_VRS = frozenset(vr for vr in ENCODED_VR if len(vr) == 2) - _LONG_VRS
_SQ, _UN = b"SQ", b"UN"
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: Where ``dcmread(stop_before_pixels=True)`` stops (pydicom's ``_at_pixel_data``).
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
TRANSFER_SYNTAX_UID = 0x00020010

_IMPLICIT_LE, _EXPLICIT_LE, _EXPLICIT_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"
#: Transfer syntax -> (implicit VR, little endian), as pydicom reads them; others: pydicom.
_SYNTAXES = {_IMPLICIT_LE: (True, True), _EXPLICIT_LE: (False, True), _EXPLICIT_BE: (False, False)}
_SYNTAXES.update({
    str(uid): (False, True) for uid in AllTransferSyntaxes
    if uid.is_encapsulated and uid.is_little_endian and not uid.is_implicit_VR and not uid.is_deflated
    and "Deflate" not in uid.name
})

#: Wanted tag -> (keyword, dictionary VR as bytes). Sequences among them: pydicom reads those.
_WANTED = {int(_TAG_OF[k]): (k, _VR_OF[k].encode()) for k in HEADER_KEYWORDS}
_SEQUENCES = frozenset(tag for tag, (_, vr) in _WANTED.items() if vr == _SQ)
_CHARSET = int(_TAG_OF["SpecificCharacterSet"])
#: Request Attributes Sequence: its items' Accession Numbers are read here (modalities fed by
#: the worklist send it with every image); the other wanted sequence is pydicom's.
_REQUESTS = int(_TAG_OF["RequestAttributesSequence"])
_ITEM_ACCESSION = int(_TAG_OF["AccessionNumber"])

_LE_HEAD = struct.Struct("<HH2sH")
_BE_HEAD = struct.Struct(">HH2sH")
_LE_IMPLICIT = struct.Struct("<HHL")
_BE_IMPLICIT = struct.Struct(">HHL")
_LE_LONG = struct.Struct("<L")
_BE_LONG = struct.Struct(">L")

_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\x00"
#: Specific Character Set (trailing padding removed) -> the codec pydicom decodes SH, LO and
#: PN values with, for the character sets of one codec and no ISO 2022 code extensions
#: (PS3.5 6.1.2.5.1); b"" is the default repertoire, which pydicom decodes as ISO 8859-1.
#: ISO_IR 138 is not among them: "IR 13" is in its name, so store.header leaves it to pydicom.
_CODECS = {name.encode(): python_encoding[name] for name in (
    "", "ISO_IR 6", "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 126", "ISO_IR 127",
    "ISO_IR 144", "ISO_IR 148", "ISO_IR 166", "ISO_IR 192", "GB18030", "GBK")}


class _Doubt(Exception):
    """Internal: the pydicom path must decide."""


class _Source:
    """The file's bytes from ``base`` on (``buf``), read on only when a header needs it."""

    __slots__ = ("f", "size", "buf", "base")

    def __init__(self, f, size: int, buf: bytes) -> None:
        self.f, self.size, self.buf, self.base = f, size, buf, 0

    def at(self, pos: int, n: int) -> int:
        """The offset in ``buf`` of the ``n`` bytes at file position ``pos`` (read if needed)."""
        off = pos - self.base
        if off + n <= len(self.buf) and off >= 0:
            return off
        if pos + n > self.size:
            raise _Doubt
        self.f.seek(pos)
        self.buf = self.f.read(max(BUFFER, n))
        self.base = pos
        if len(self.buf) < n:  # the file shrank under us
            raise _Doubt
        return 0


def native_header(path: str | os.PathLike[str]) -> InstanceHeader | None:
    """The header of the Part 10 file at ``path`` read natively, or ``None`` when only the
    pydicom path can say (see the module doc). An :class:`OSError` propagates."""
    settings = config.settings
    if (settings.reading_validation_mode == config.RAISE or not settings.infer_sq_for_un_vr
            or not config.assume_implicit_vr_switch or config.use_none_as_empty_text_VR_value):
        return None
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size < 132:  # not a Part 10 file (or not a regular file): pydicom says what it is
            return None
        src = _Source(f, size, f.read(BUFFER))
        try:
            syntax, values, requests = _read(src)
            return _header(syntax, values, requests)
        except _Doubt:
            return None
        except (struct.error, IndexError, ValueError, LookupError):  # pragma: no cover - a check missed
            return None


def _read(src: _Source) -> tuple[str, dict[int, bytes], list[bytes | None] | None]:
    """The transfer syntax, the wanted top-level values (tag -> bytes) and the Accession
    Number of each item of the Request Attributes Sequence (None: no sequence)."""
    size, buf = src.size, src.buf
    if size < 132 or buf[128:132] != b"DICM":
        raise _Doubt
    syntax, pos = _file_meta(src)
    encoding = _SYNTAXES.get(syntax)
    if encoding is None or syntax in PrivateTransferSyntaxes:
        raise _Doubt
    implicit, little = encoding
    if pos + 6 > size:
        raise _Doubt  # an empty dataset (or a cut one)
    off = src.at(pos, 6)
    head = src.buf[off:off + 6]
    if head[0] == 0 and head[1] == 0:
        raise _Doubt  # group 0000: pydicom reads a Command Set
    looks_implicit = not (0x40 < head[4] < 0x5B and 0x40 < head[5] < 0x5B)
    if looks_implicit != implicit:
        raise _Doubt  # pydicom would switch (and warn)
    values, requests = _dataset(src, pos, implicit, little)
    return syntax, values, requests


def _file_meta(src: _Source) -> tuple[str, int]:
    """The Transfer Syntax UID (trailing NULs and spaces removed, as pydicom's UI) and the
    position of the dataset."""
    pos, size, last, syntax = 132, src.size, -1, None
    while True:
        if pos + 8 > size:
            raise _Doubt
        off = src.at(pos, min(12, size - pos))
        buf = src.buf
        group, element, vr, length = _LE_HEAD.unpack_from(buf, off)
        if group != 2:
            break
        tag = group << 16 | element
        if tag <= last:
            raise _Doubt
        last = tag
        if vr in _LONG_VRS:
            if pos + 12 > size:
                raise _Doubt
            (length,) = _LE_LONG.unpack_from(buf, off + 8)
            pos += 12
        elif vr in _SHORT_VRS:
            pos += 8
        else:
            raise _Doubt
        if length == UNDEFINED or pos + length > size:
            raise _Doubt
        if tag == TRANSFER_SYNTAX_UID:
            if vr != b"UI":
                raise _Doubt
            off = src.at(pos, length)
            value = src.buf[off:off + length]
            if value.translate(None, _PRINTABLE):
                raise _Doubt
            syntax = value.decode("ascii").rstrip("\0 ")
        pos += length
    if syntax is None:
        raise _Doubt
    return syntax, pos


def _dataset(src: _Source, pos: int, implicit: bool, little: bool) -> tuple[dict[int, bytes], list | None]:
    """Walk the top-level elements from ``pos`` to the pixel data (or the end of the file)."""
    size = src.size
    head = (_LE_IMPLICIT if little else _BE_IMPLICIT) if implicit else (_LE_HEAD if little else _BE_HEAD)
    unpack_head = head.unpack_from
    unpack_long = (_LE_LONG if little else _BE_LONG).unpack_from
    wanted, long_vrs, short_vrs, pixel_tags = _WANTED, _LONG_VRS, _SHORT_VRS, _PIXEL_TAGS
    values: dict[int, bytes] = {}
    requests: list[bytes | None] | None = None
    last = -1
    buf, base = src.buf, src.base
    buflen = len(buf)
    while pos + 8 <= size:
        off = pos - base
        if off + 12 > buflen:
            off = src.at(pos, min(12, size - pos))
            buf, base = src.buf, src.base
            buflen = len(buf)
        if implicit:
            group, element, length = unpack_head(buf, off)
            vr = None
            start = pos + 8
        else:
            group, element, vr, length = unpack_head(buf, off)
            if vr in short_vrs:
                start = pos + 8
            elif vr in long_vrs:
                if pos + 12 > size:
                    raise _Doubt
                (length,) = unpack_long(buf, off + 8)
                start = pos + 12
            else:
                raise _Doubt
        tag = group << 16 | element
        if tag <= last:
            raise _Doubt
        last = tag
        if tag >= 0x7FE00008:
            if tag in pixel_tags:
                return values, requests
            if group == 0xFFFE:
                raise _Doubt
        if tag == _REQUESTS:
            if vr is not None and vr != _SQ:
                raise _Doubt
            requests = []
            end = None if length == UNDEFINED else start + length
            if end is not None and end > size:
                raise _Doubt
            pos = _sequence(src, start, implicit, little, 1, end, requests)
            buf, base = src.buf, src.base
            buflen = len(buf)
        elif length == UNDEFINED:
            if tag in wanted or not _is_sequence(src, tag, vr, start, little):
                raise _Doubt
            pos = _sequence(src, start, implicit, little, 1)
            buf, base = src.buf, src.base
            buflen = len(buf)
        elif tag in wanted:
            if tag in _SEQUENCES or (vr is not None and vr != wanted[tag][1]):
                raise _Doubt
            pos = start + length
            if pos > size:
                raise _Doubt
            voff = start - base
            if voff + length > buflen:
                voff = src.at(start, length)
                buf, base = src.buf, src.base
                buflen = len(buf)
            values[tag] = buf[voff:voff + length]
        else:
            pos = start + length
    if pos != size:
        raise _Doubt  # a length past the end, or a file cut between elements
    return values, requests


def _is_sequence(src: _Source, tag: int, vr: bytes | None, start: int, little: bool) -> bool:
    """Whether pydicom reads an element of undefined length as a sequence (else it reads up
    to a delimiter, which is left to it)."""
    if vr is not None and vr != _UN:
        return vr == _SQ
    if vr == _UN:
        return True  # PS3.5 6.2.2, pydicom's infer_sq_for_un_vr (checked at the start)
    try:
        return _dictionary_vr(tag) == "SQ"
    except KeyError:  # private: a sequence if an item follows
        off = src.at(start, 4)
        group, element = struct.unpack_from("<HH" if little else ">HH", src.buf, off)
        return (group << 16 | element) == ITEM


def _sequence(src: _Source, pos: int, implicit: bool, little: bool, depth: int, end: int | None = None,
              accessions: list | None = None) -> int:
    """Walk the items of the sequence whose value starts at ``pos`` as pydicom's
    ``read_sequence`` does: up to ``end`` (a defined length) or its delimiter (undefined);
    return the position after it. With ``accessions``, each item's Accession Number (its
    bytes, None when the item has none) is appended to it."""
    if depth > MAX_DEPTH:
        raise _Doubt
    tag_length = (_LE_IMPLICIT if little else _BE_IMPLICIT).unpack_from
    while True:
        if end is not None:
            if pos == end:
                return pos
            if pos + 8 > end:
                raise _Doubt
        off = src.at(pos, 8)
        group, element, length = tag_length(src.buf, off)
        tag = group << 16 | element
        pos += 8
        if tag == SEQUENCE_END and end is None:
            if length:
                raise _Doubt
            return pos
        if tag != ITEM:
            raise _Doubt
        item_implicit = implicit or _item_looks_implicit(src, pos)
        found = None if accessions is None else {}
        if length == UNDEFINED:
            pos = _item(src, pos, None, item_implicit, little, depth, found)
        else:
            if pos + length > (src.size if end is None else end):
                raise _Doubt
            pos = _item(src, pos, pos + length, item_implicit, little, depth, found)
        if end is not None and pos > end:
            raise _Doubt
        if accessions is not None:
            accessions.append(found.get(_ITEM_ACCESSION))


def _item_looks_implicit(src: _Source, pos: int) -> bool:
    """pydicom's test of an item of an Explicit VR dataset: Implicit VR when its first
    element has no VR (a sequence may be encoded so, PS3.5 6.2.2)."""
    if pos + 6 > src.size:
        return False
    off = src.at(pos, 6)
    a, b = src.buf[off + 4], src.buf[off + 5]
    return not (0x40 < a < 0x5B and 0x40 < b < 0x5B)


def _item(src: _Source, pos: int, end: int | None, implicit: bool, little: bool, depth: int,
          found: dict | None = None) -> int:
    """Walk one item's elements (to ``end``, or to its Item Delimitation Item when ``end``
    is None); return the position after it. With ``found``, the item's own Accession Number
    (SH, defined length) goes in it; an item with a Specific Character Set of its own is
    left to pydicom."""
    size = src.size
    head = (_LE_IMPLICIT if little else _BE_IMPLICIT) if implicit else (_LE_HEAD if little else _BE_HEAD)
    unpack_long = (_LE_LONG if little else _BE_LONG).unpack_from
    limit = size if end is None else end
    while True:
        if end is not None and pos == end:
            return pos
        if pos + 8 > limit:
            raise _Doubt
        off = src.at(pos, min(12, limit - pos))
        buf = src.buf
        if implicit:
            group, element, length = head.unpack_from(buf, off)
            vr = None
            start = pos + 8
        else:
            group, element, vr, length = head.unpack_from(buf, off)
            start = pos + 8
        tag = group << 16 | element
        if group == 0xFFFE:
            # an Item Delimitation Item is a tag and a 32-bit length, whatever the VR encoding
            if tag == ITEM_END and end is None and unpack_long(buf, off + 4)[0] == 0:
                return pos + 8
            raise _Doubt
        if not implicit:
            if vr in _LONG_VRS:
                if pos + 12 > limit:
                    raise _Doubt
                (length,) = unpack_long(buf, off + 8)
                start = pos + 12
            elif vr not in _SHORT_VRS:
                raise _Doubt
        if found is not None and tag in (_ITEM_ACCESSION, _CHARSET):
            if tag == _CHARSET or length == UNDEFINED or (vr is not None and vr != b"SH"):
                raise _Doubt
            if start + length > limit:
                raise _Doubt
            voff = src.at(start, length)
            found[tag] = src.buf[voff:voff + length]
        if length == UNDEFINED:
            if not _is_sequence(src, tag, vr, start, little):
                raise _Doubt
            pos = _sequence(src, start, implicit, little, depth + 1)
            if pos > limit:
                raise _Doubt
            continue
        pos = start + length
        if pos > limit:
            raise _Doubt


def _text(value: bytes | None) -> str:
    """:func:`store.header._raw_text` of a value's bytes."""
    if not value:
        return ""
    if value.translate(None, _PRINTABLE):
        raise _Doubt
    if b"\\" not in value:
        return value.strip(b" \x00").decode("ascii")
    return "\\".join(part.strip(" \x00").strip() for part in value.decode("ascii").split("\\"))


def _person_name(value: bytes | None) -> str:
    """pydicom's ``str(PersonName)`` of each value, stripped, joined by a backslash (the
    value is printable ASCII or NUL: checked by the caller)."""
    if not value:
        return ""
    value = value.rstrip(b"\x00 ")
    if b"\x00" in value:
        raise _Doubt
    return _names(value.decode("ascii"))


def _names(text: str) -> str:
    names = []
    for name in text.split("\\"):
        groups = name.split("=")
        while groups and not groups[-1]:  # PersonName drops empty component groups at the end
            groups.pop()
        names.append("=".join(groups).strip())
    return "\\".join(names)


def _decoded_text(value: bytes | None, codec: str | None) -> str:
    """An SH or LO value as pydicom converts it (decoded whole with the character set's
    codec, split at backslashes, trailing spaces and NULs removed), each value stripped;
    printable ASCII as :func:`_text` takes it (as store.header's raw path does)."""
    if not value or not value.translate(None, _PRINTABLE):
        return _text(value)
    text = _decode(value, codec)
    return "\\".join(part.rstrip("\0 ").strip() for part in text.split("\\"))


def _decoded_name(value: bytes | None, codec: str | None) -> str:
    """A PN value as pydicom converts it (trailing spaces and NULs removed, decoded whole with
    the character set's codec), then as :func:`_person_name`."""
    if not value or not value.translate(None, _PRINTABLE):
        return _person_name(value)
    return _names(_decode(value.rstrip(b"\x00 "), codec))


def _decode(value: bytes, codec: str | None) -> str:
    if codec is None or b"\x1b" in value:
        raise _Doubt  # another character set, or ISO 2022 code extensions: pydicom's
    try:
        return value.decode(codec)
    except UnicodeDecodeError:
        raise _Doubt from None  # pydicom warns and replaces: let it


_T = {keyword: tag for tag, (keyword, _) in _WANTED.items()}
_SOP_CLASS, _SOP_INSTANCE = _T["SOPClassUID"], _T["SOPInstanceUID"]
_STUDY_INSTANCE, _SERIES_INSTANCE = _T["StudyInstanceUID"], _T["SeriesInstanceUID"]
_ACCESSION, _PATIENT_ID, _BIRTH_DATE = _T["AccessionNumber"], _T["PatientID"], _T["PatientBirthDate"]
_STUDY_DATE, _STUDY_TIME, _STUDY_ID = _T["StudyDate"], _T["StudyTime"], _T["StudyID"]
_STUDY_DESCRIPTION, _SERIES_DESCRIPTION = _T["StudyDescription"], _T["SeriesDescription"]
_SERIES_NUMBER, _INSTANCE_NUMBER = _T["SeriesNumber"], _T["InstanceNumber"]
_SEX, _MODALITY = _T["PatientSex"], _T["Modality"]
_IMAGE_LATERALITY, _LATERALITY = _T["ImageLaterality"], _T["Laterality"]
_PATIENT_NAME, _REFERRING = _T["PatientName"], _T["ReferringPhysicianName"]


def _header(syntax: str, values: dict[int, bytes], requests: list[bytes | None] | None = None) -> InstanceHeader:
    """The header from the wanted values, as :func:`store.header._header_of` makes it."""
    requests = requests or []
    charset = values.get(_CHARSET)
    if charset is not None:
        if charset.translate(None, _PRINTABLE):
            raise _Doubt
        if b"IR 13" in charset:
            raise _Doubt  # JIS X 0201: 0x5C and 0x7E are other characters
    every = b"".join(values.values()) + b"".join(v for v in requests if v)
    get = values.get
    if every.translate(None, _PRINTABLE):  # some value is not ASCII: decoded where pydicom decodes
        codec = _CODECS.get(b"" if charset is None else charset.rstrip(b" \x00"))
        return _build(syntax, get, requests, _text, lambda v: _decoded_text(v, codec), lambda v: _decoded_name(v, codec))
    if b"\\" in every:
        return _build(syntax, get, requests, _text, _text, _person_name)
    return _build(syntax, get, requests, _single, _single, _person_name)


def _single(value: bytes | None) -> str:
    """:func:`_text` of a printable value without a backslash."""
    return value.strip(b" \x00").decode("ascii") if value else ""


def _build(syntax: str, get, requests, text, string, name) -> InstanceHeader:
    """``text`` for the values whatever the character set, ``string`` for SH and LO, ``name``
    for PN."""
    return InstanceHeader(
        sop_class_uid=text(get(_SOP_CLASS)),
        sop_instance_uid=text(get(_SOP_INSTANCE)),
        study_instance_uid=text(get(_STUDY_INSTANCE)),
        series_instance_uid=text(get(_SERIES_INSTANCE)),
        accession_number=string(get(_ACCESSION)),
        request_accession_numbers=tuple(string(value) for value in requests),
        patient_id=string(get(_PATIENT_ID)),
        patient_name=name(get(_PATIENT_NAME)),
        birth_date=text(get(_BIRTH_DATE)),
        sex=text(get(_SEX)).upper(),
        modality=text(get(_MODALITY)).upper(),
        laterality=text(get(_IMAGE_LATERALITY)).upper() or text(get(_LATERALITY)).upper(),
        study_date=text(get(_STUDY_DATE)),
        transfer_syntax_uid=syntax,
        study_time=text(get(_STUDY_TIME)),
        study_id=string(get(_STUDY_ID)),
        study_description=string(get(_STUDY_DESCRIPTION)),
        referring_physician=name(get(_REFERRING)),
        series_number=text(get(_SERIES_NUMBER)),
        series_description=string(get(_SERIES_DESCRIPTION)),
        instance_number=text(get(_INSTANCE_NUMBER)),
    )
