"""The series of a study as the review desk previews them: one file per series to render.

Reads the index only; the front end reads the file it is given (never moves it).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from infra.errors import NotFound


@dataclass(frozen=True)
class Series:
    series_instance_uid: str
    instances: int
    transfer_syntax_uid: str
    preview_file: Path  # the middle instance, by SOP Instance UID order


def series_of(store, study: str) -> list[Series]:
    """Every series of ``study`` (held or archived), with the file to preview it by."""
    if store.index.study_row(study) is None:
        raise NotFound(f"no study has Study Instance UID {study!r}; the held queue lists the held ones")
    grouped = defaultdict(list)
    for instance in store.index.study_instances(study):
        grouped[instance.series_instance_uid].append(instance)
    found = []
    for uid in sorted(grouped):
        instances = sorted(grouped[uid], key=lambda i: i.sop_instance_uid)
        middle = instances[len(instances) // 2]
        found.append(Series(uid, len(instances), middle.transfer_syntax_uid, store.archive.root / middle.path))
    return found
