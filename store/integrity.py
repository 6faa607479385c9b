"""Is a received instance whole? Checked before it is acknowledged (rule 4 of docs/rules.md).

pydicom forgives what it can: a value cut short is read as far as it goes, an element that
claims more bytes than remain is taken as the rest of the file, a dataset that ends between
two elements simply ends, and Implicit VR bytes met in an Explicit VR dataset are read as
Implicit. A C-STORE whose last 100 KiB were lost, or that was encoded in another transfer
syntax than the one negotiated, would therefore be stored and acknowledged as good.
:func:`check_whole` refuses such a file (:class:`IncompleteInstance`, a C-STORE 0xC000)
before anything is filed.

What is checked, in the Part 10 file at ``path``:

1. **Part 10 structure.** The 128-byte preamble, ``DICM`` and the File Meta Information
   (Explicit VR Little Endian) with a Transfer Syntax UID that names a transfer syntax
   the check can walk: Implicit or Explicit VR Little Endian, Explicit VR Big Endian, or an
   encapsulated (compressed) syntax. Deflated Explicit VR Little Endian is refused: reading
   it means inflating it, and the gatekeeper does not accept it (``gateway.dicom.syntaxes``).
2. **The dataset parses to its end under that syntax, at every depth.** In Explicit VR every
   element has one of the VRs of PS3.5 Table 6.2-1 (Implicit VR bytes sent on an Explicit
   VR context fail here at once: their length bytes are no VR). Every length fits in what
   remains of its container (the file, a sequence, an item); undefined lengths appear only
   where PS3.5 7.5 and A.4 allow them (sequences, items, UN holding a sequence, encapsulated
   pixel data) and are closed by their delimiter inside that container; the last element
   ends exactly at the end of the file.
3. **Native pixel data is as long as the image says.** For Pixel Data (7FE0,0010), Float
   Pixel Data (7FE0,0008) and Double Float Pixel Data (7FE0,0009) at the top level of an
   uncompressed syntax, the length is Rows x Columns x Samples per Pixel x Number of Frames
   x Bits Allocated / 8 (bits rounded up to whole bytes; YBR_FULL_422 holds two samples per
   pixel, PS3.3 C.7.6.3.1.2), or one byte more when that is odd (the padding of PS3.5 8.1.1).
   Number of Frames defaults to 1 and Samples per Pixel to 1 when absent; Rows, Columns and
   Bits Allocated are required.
4. **Encapsulated pixel data is complete** (PS3.5 A.4): undefined length; a Basic Offset
   Table item (possibly empty, a whole number of 32-bit offsets); at least one fragment
   item; a Sequence Delimitation Item of length 0; and, except for the video syntaxes (one
   stream for all frames), at least one fragment per frame.
5. **Pixel data the object promises is there.** An object that carries the Image Pixel
   module at its top level (Rows, Columns and Bits Allocated all present) must carry pixel
   data: otherwise it was most likely cut just before its Pixel Data. Objects without pixel
   data by nature (structured reports, key object selections, presentation states,
   waveforms, encapsulated documents, MR spectroscopy, raw data) have no Bits Allocated
   (0028,0100) at the top level, so they pass; so does an object that names its pixel data
   by Pixel Data Provider URL (0028,7FE0). Pixel data nested in a sequence (an icon image)
   is checked for structure (2) and, when encapsulated, completeness (4), not for length.

Values are never read except the few small image attributes above: every other value is
skipped by seeking, so the cost grows with the number of elements, not the size of the
file (a 512 MiB image is checked in well under a millisecond, with a 64 KiB read buffer).
"""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID, MPEGTransferSyntaxes

from store.header import UnreadableInstance

#: Explicit VRs with a 16-bit length (PS3.5 Table 7.1-2) and with a 32-bit length after two
#: reserved bytes (Table 7.1-1).
_SHORT_VRS = frozenset(v.encode() for v in (
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN", "SH", "SL", "SS", "ST", "TM",
    "UI", "UL", "US"))
_LONG_VRS = frozenset(v.encode() for v in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"))

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA = 0x7FE00010, 0x7FE00008, 0x7FE00009
PIXEL_TAGS = (PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA)
PIXEL_DATA_PROVIDER_URL = 0x00287FE0
TRANSFER_SYNTAX_UID = 0x00020010
#: Top-level image attributes read for rules 3 to 5: tag -> keyword.
_IMAGE_TAGS = {0x00280002: "SamplesPerPixel", 0x00280004: "PhotometricInterpretation",
               0x00280008: "NumberOfFrames", 0x00280010: "Rows", 0x00280011: "Columns",
               0x00280100: "BitsAllocated"}
_SMALL = 64  # longest value read for those attributes
#: Sequences nested deeper than this are refused (deep SR content trees nest a few dozen).
MAX_DEPTH = 100
_BUFFER = 64 * 1024


class IncompleteInstance(UnreadableInstance):
    """A received file is not a whole dataset under its transfer syntax (truncated, mis-encoded)."""


class _Damaged(Exception):
    """Internal: what is wrong, and where; turned into :class:`IncompleteInstance`."""


class _Encoding:
    def __init__(self, implicit: bool, little: bool, encapsulated: bool) -> None:
        self.implicit, self.little, self.encapsulated = implicit, little, encapsulated
        end = "<" if little else ">"
        self.tag_length = struct.Struct(end + "HHL")  # tag + 32-bit length (implicit, items)
        self.short = struct.Struct(end + "H")
        self.long = struct.Struct(end + "L")


_IMPLICIT_LE = _Encoding(True, True, False)  # also the content of UN with undefined length (PS3.5 6.2.2)


def check_whole(path: str | os.PathLike[str]) -> None:
    """Refuse the Part 10 file at ``path`` unless it is a whole dataset (see the module doc).

    Raises :class:`IncompleteInstance` (an :class:`~store.header.UnreadableInstance`) saying
    what is wrong and where; an :class:`OSError` reading the file propagates as is.
    """
    path = path if isinstance(path, Path) else Path(path)  # Path(a Path) parses it again
    with open(path, "rb", buffering=_BUFFER) as f:
        size = os.fstat(f.fileno()).st_size
        reader = _Reader(f, size)
        try:
            syntax = _file_meta(reader)
            encoding = _encoding_of(syntax)
            image: dict[str, object] = {}
            _dataset(reader, encoding, size, image=image)
            _check_pixels(image, syntax)
        except _Damaged as exc:
            raise IncompleteInstance(
                f"{path.name} is not a whole DICOM dataset: {exc}. It was not stored; the sender "
                "should send it again (and check its encoding if it fails again)."
            ) from None


class _Reader:
    """Reads and skips within the file, keeping the position, never past a container's end."""

    def __init__(self, f, size: int) -> None:
        self.f, self.size, self.pos = f, size, 0

    def read(self, n: int, end: int, what: str) -> bytes:
        if n > end - self.pos:
            raise _Damaged(f"{what} at byte {self.pos} needs {n} bytes, only {max(end - self.pos, 0)} remain"
                           f"{self._where(end)}")
        data = self.f.read(n)
        if len(data) != n:
            raise _Damaged(f"the file ended at byte {self.pos + len(data)} while reading {what}")
        self.pos += n
        return data

    def skip(self, n: int, end: int, what: str) -> None:
        if n > end - self.pos:
            raise _Damaged(f"{what} claims {n} bytes, only {max(end - self.pos, 0)} remain{self._where(end)}")
        self.f.seek(n, 1)
        self.pos += n

    def _where(self, end: int) -> str:
        return " in the file (cut short?)" if end == self.size else " in its sequence or item"


def _file_meta(r: _Reader) -> str:
    """Skip the preamble and File Meta Information; the Transfer Syntax UID."""
    if r.size < 132:
        raise _Damaged("it is too short to be a DICOM Part 10 file (no preamble and DICM prefix)")
    r.skip(128, r.size, "the preamble")
    if r.read(4, r.size, "the DICM prefix") != b"DICM":
        raise _Damaged("it has no DICM prefix at byte 128: not a DICOM Part 10 file")
    syntax = ""
    while r.pos < r.size:
        at = r.pos
        head = r.read(8, r.size, "a File Meta Information element")
        group, element = struct.unpack("<HH", head[:4])
        if group != 0x0002:
            r.f.seek(-8, 1)
            r.pos -= 8
            break
        vr = head[4:6]
        if vr in _SHORT_VRS:
            length = struct.unpack("<H", head[6:8])[0]
        elif vr in _LONG_VRS:
            length = struct.unpack("<L", r.read(4, r.size, "a File Meta Information length"))[0]
        else:
            raise _Damaged(f"the File Meta Information element (0002,{element:04X}) has no valid VR")
        if length == UNDEFINED:
            raise _Damaged(f"the File Meta Information element (0002,{element:04X}) has an undefined length")
        if (group << 16 | element) == TRANSFER_SYNTAX_UID:
            syntax = r.read(length, r.size, "the Transfer Syntax UID").rstrip(b"\0 ").decode("ascii", "replace")
        else:
            r.skip(length, r.size, f"the File Meta Information element (0002,{element:04X}) at byte {at}")
    if not syntax:
        raise _Damaged("its File Meta Information has no Transfer Syntax UID (0002,0010)")
    return syntax


@functools.lru_cache(maxsize=64)
def _encoding_of(syntax: str) -> _Encoding:
    uid = UID(syntax)
    if not uid.is_transfer_syntax:
        raise _Damaged(f"its Transfer Syntax UID {syntax} is not a transfer syntax the gatekeeper knows")
    if uid.is_deflated:
        raise _Damaged(f"it is in {uid.name}, which the gatekeeper does not accept")
    return _Encoding(uid.is_implicit_VR, uid.is_little_endian, uid.is_encapsulated)


def _element_head(r: _Reader, enc: _Encoding, end: int) -> tuple[int, bytes | None, int]:
    """(tag, VR or None, length) of the next element; the reader is left at its value."""
    head = r.read(8, end, "an element header")
    group, element, length = enc.tag_length.unpack(head)
    tag = group << 16 | element
    if enc.implicit or group == 0xFFFE:  # items and delimiters have no VR in any syntax
        return tag, None, length
    vr = head[4:6]
    if vr in _SHORT_VRS:
        return tag, vr, enc.short.unpack(head[6:8])[0]
    if vr in _LONG_VRS:
        return tag, vr, enc.long.unpack(r.read(4, end, "an element length"))[0]
    raise _Damaged(f"element ({group:04X},{element:04X}) at byte {r.pos - 8} has no valid VR "
                   f"(bytes {vr!r}): the data is not {'Explicit VR' if not enc.implicit else 'Implicit VR'} "
                   f"{'Little' if enc.little else 'Big'} Endian as negotiated, or is corrupt")


def _dataset(r: _Reader, enc: _Encoding, end: int, *, image: dict | None = None, item: bool = False,
             depth: int = 0) -> None:
    """Walk the elements up to ``end`` (a defined length) or, for an ``item`` of undefined
    length, up to its Item Delimitation Item (which must come before ``end``)."""
    if depth > MAX_DEPTH:
        raise _Damaged(f"its sequences are nested more than {MAX_DEPTH} deep at byte {r.pos}")
    while True:
        if r.pos == end:
            if item:
                raise _Damaged(f"an item of undefined length has no Item Delimitation Item before byte {end}"
                               f"{r._where(end)}")
            return
        start = r.pos
        tag, vr, length = _element_head(r, enc, end)
        where = f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {start}"
        if tag == ITEM_END:
            if not item:
                raise _Damaged(f"an Item Delimitation Item at byte {start} is outside any item")
            if length != 0:
                raise _Damaged(f"the Item Delimitation Item at byte {start} has length {length}, not 0")
            return
        if tag >> 16 == 0xFFFE:
            raise _Damaged(f"an item tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {start} is outside any sequence")
        if length == UNDEFINED:
            if tag in PIXEL_TAGS and enc.encapsulated and vr in (b"OB", b"OW"):
                fragments = _encapsulated(r, enc, end, start)
                if image is not None:
                    image[tag], image["fragments"] = UNDEFINED, fragments
            elif vr == b"SQ" or (vr is None and enc.implicit):
                _sequence(r, enc, end, UNDEFINED, where, depth)
            elif vr == b"UN":
                _sequence(r, _IMPLICIT_LE, end, UNDEFINED, where, depth)
            else:
                raise _Damaged(f"{where} has an undefined length, which only sequences and encapsulated "
                               "pixel data may have")
            continue
        if vr == b"SQ" or (vr is None and _is_sequence(tag)):
            _sequence(r, enc, r.pos + _fits(r, length, end, where), length, where, depth)
            continue
        if image is not None:
            if tag in PIXEL_TAGS:
                if enc.encapsulated and tag == PIXEL_DATA:
                    raise _Damaged(f"{where}: Pixel Data of an encapsulated transfer syntax must have an "
                                   "undefined length (PS3.5 A.4)")
                image[tag] = length
            elif tag in _IMAGE_TAGS and length <= _SMALL:
                image[_IMAGE_TAGS[tag]] = _value(r.read(length, end, where), vr, tag, enc)
                continue
            elif tag == PIXEL_DATA_PROVIDER_URL:
                image[tag] = length
        r.skip(length, end, where)


def _sequence(r: _Reader, enc: _Encoding, end: int, length: int, where: str, depth: int) -> None:
    """Walk the items of a sequence: up to ``end`` for a defined length, else to its delimiter."""
    undefined = length == UNDEFINED
    while True:
        if r.pos == end:
            if undefined:
                raise _Damaged(f"the sequence {where} has no Sequence Delimitation Item{r._where(end)}")
            return
        start = r.pos
        ended, item_length = _item(r, enc, end, f"the sequence {where}", delimiter=undefined)
        if ended:
            return
        if item_length == UNDEFINED:
            _dataset(r, enc, end, item=True, depth=depth + 1)
        else:
            _dataset(r, enc, r.pos + _fits(r, item_length, end, f"the item at byte {start}"), depth=depth + 1)


def _item(r: _Reader, enc: _Encoding, end: int, what: str, *, delimiter: bool) -> tuple[bool, int]:
    """Read an Item (or, when ``delimiter``, a Sequence Delimitation Item) tag and length (PS3.5 7.5).

    Returns (True, 0) at the delimiter, else (False, the item's length).
    """
    at = r.pos
    group, element, length = enc.tag_length.unpack(r.read(8, end, f"an item of {what}"))
    tag = group << 16 | element
    if tag == SEQUENCE_END and delimiter:
        if length != 0:
            raise _Damaged(f"the Sequence Delimitation Item at byte {at} has length {length}, not 0")
        return True, 0
    if tag != ITEM:
        raise _Damaged(f"{what} holds ({group:04X},{element:04X}) at byte {at} where an item should be")
    return False, length


def _encapsulated(r: _Reader, enc: _Encoding, end: int, start: int) -> int:
    """Basic Offset Table, fragments, Sequence Delimitation Item (PS3.5 A.4); the number of fragments."""
    fragments, offset_table = 0, None
    while True:
        at = r.pos
        if at == end:
            raise _Damaged(f"the encapsulated Pixel Data at byte {start} has no Sequence Delimitation Item"
                           f"{r._where(end)}")
        ended, length = _item(r, enc, end, "the encapsulated Pixel Data", delimiter=True)
        if ended:
            break
        if length == UNDEFINED:
            raise _Damaged(f"an item of the encapsulated Pixel Data at byte {at} has an undefined length")
        if offset_table is None:
            if length % 4:
                raise _Damaged(f"the Basic Offset Table at byte {at} is {length} bytes, not a whole number of offsets")
            offset_table = length
            r.skip(length, end, f"the Basic Offset Table at byte {at}")
        else:
            fragments += 1
            r.skip(length, end, f"fragment {fragments} of the encapsulated Pixel Data at byte {at}")
    if offset_table is None or fragments == 0:
        raise _Damaged(f"the encapsulated Pixel Data at byte {start} has no fragments")
    return fragments


def _fits(r: _Reader, length: int, end: int, what: str) -> int:
    if length > end - r.pos:
        raise _Damaged(f"{what} claims {length} bytes, only {end - r.pos} remain{r._where(end)}")
    return length


def _is_sequence(tag: int) -> bool:
    """Implicit VR: whether the data dictionary says SQ (private and unknown tags are opaque)."""
    if tag >> 16 & 1:
        return False
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


def _value(raw: bytes, vr: bytes | None, tag: int, enc: _Encoding):
    """The value of one of the image attributes: an int for US and IS, text for CS."""
    if tag in (0x00280004,):
        return raw.rstrip(b"\0 ").decode("ascii", "replace").strip()
    if tag == 0x00280008:  # Number of Frames, IS
        text = raw.rstrip(b"\0 ").decode("ascii", "replace").strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)  # "2.0": sloppy, but a number of frames all the same
        except ValueError:
            number = -1.0
        if not number.is_integer() or number < 0:  # also nan and inf
            raise _Damaged(f"its Number of Frames (0028,0008) {text!r} is not a whole number")
        return int(number)
    if len(raw) < 2:
        return None  # US with no value
    return enc.short.unpack(raw[:2])[0]


def _check_pixels(image: dict, syntax: str) -> None:
    """Rules 3 to 5 of the module doc, on the top level's pixel data and image attributes."""
    present = [tag for tag in PIXEL_TAGS if tag in image]
    if not present:
        promised = all(image.get(k) is not None for k in ("Rows", "Columns", "BitsAllocated"))
        if promised and PIXEL_DATA_PROVIDER_URL not in image:
            raise _Damaged("it has Rows, Columns and Bits Allocated but no Pixel Data: it was most likely cut "
                           "short before its pixel data")
        return
    frames = image.get("NumberOfFrames")
    frames = 1 if frames is None else frames
    if frames < 0:
        raise _Damaged(f"its Number of Frames (0028,0008) is {frames}")
    for tag in present:
        length = image[tag]
        if length == UNDEFINED:  # encapsulated: its structure was checked while walking
            if UID(syntax) not in MPEGTransferSyntaxes and image["fragments"] < frames:
                raise _Damaged(f"its encapsulated Pixel Data has {image['fragments']} fragments for {frames} "
                               "frames: each frame needs at least one (PS3.5 A.4), frames are missing")
            continue
        missing = [k for k in ("Rows", "Columns", "BitsAllocated") if image.get(k) is None]
        if missing:
            raise _Damaged(f"it has pixel data but no {', '.join(missing)}, so its length cannot be checked")
        samples = image.get("SamplesPerPixel")
        samples = 1 if samples is None else samples
        if image.get("PhotometricInterpretation") == "YBR_FULL_422":
            samples = 2  # two samples per pixel on the wire (PS3.3 C.7.6.3.1.2)
        bits = image["Rows"] * image["Columns"] * samples * frames * image["BitsAllocated"]
        expected = (bits + 7) // 8
        if length != expected and not (expected % 2 and length == expected + 1):
            name = {PIXEL_DATA: "Pixel Data", FLOAT_PIXEL_DATA: "Float Pixel Data",
                    DOUBLE_PIXEL_DATA: "Double Float Pixel Data"}[tag]
            raise _Damaged(
                f"its {name} is {length} bytes, not the {expected} that {image['Rows']} rows x {image['Columns']} "
                f"columns x {samples} samples x {frames} frames x {image['BitsAllocated']} bits allocated make")
