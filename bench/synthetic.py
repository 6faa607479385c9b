"""Synthetic orders and auths for benchmarks (no real patient data)."""

from __future__ import annotations

import datetime as dt
import random

from worklist.npi import luhn_check_digit

FACILITY_NPI = "1987654328"
STATIONS = [f"MR{i}" for i in range(1, 6)] + [f"CT{i}" for i in range(1, 6)]
ADVANCED = {"MR": ["70553", "73721", "72148"], "CT": ["74177", "71250", "70450"]}


def npi(n: int) -> str:
    body = f"1{n:08d}"
    return body + str(luhn_check_digit("80840" + body))


def orders_and_auths(count: int, *, first_day: dt.date, days: int, seed: int = 7):
    """``count`` order records spread over ``days`` days and the stations, half withheld.

    Every order needs an auth; on each station and day, every other order gets a
    matching auth and the rest an auth for another CPT code, so half are served and
    half withheld (AUTH_CPT_MISMATCH).
    """
    rng = random.Random(seed)
    orders, auths = [], []
    for i in range(count):
        station = STATIONS[i % len(STATIONS)]
        modality = station[:2]
        cpt = rng.choice(ADVANCED[modality])
        day = first_day + dt.timedelta(days=(i // len(STATIONS)) % days)
        minute = (i // (len(STATIONS) * days)) * 15
        start = dt.datetime.combine(day, dt.time(7, 0)) + dt.timedelta(minutes=minute % (14 * 60))
        patient = f"SYN{i:07d}"
        ordering = npi(1000 + i % 50)
        orders.append({
            "accession_number": f"B{i:09d}",
            "patient": {"id": patient, "name": f"SYNTH^PATIENT{i}", "birth_date": "1970-01-01", "sex": "O"},
            "procedure": {"cpt": cpt, "description": f"{modality} EXAM {cpt}", "modality": modality},
            "scheduled": {"start": start.isoformat(), "station_ae": station},
            "ordering_provider": {"npi": ordering, "name": "SYNTH^DOCTOR"},
            "facility_npi": FACILITY_NPI,
            "payer": {"id": "SYNTH_PAYER"},
        })
        other = "70551" if cpt != "70551" else "70552"
        auths.append({
            "auth_number": f"PA-B{i:09d}",
            "payer_id": "SYNTH_PAYER",
            "patient_id": patient,
            "cpt_codes": [cpt if (i // (len(STATIONS) * days)) % 2 == 0 else other],
            "facility_npi": FACILITY_NPI,
            "ordering_npi": ordering,
            "valid_from": (first_day - dt.timedelta(days=30)).isoformat(),
            "valid_to": (first_day + dt.timedelta(days=days + 30)).isoformat(),
            "units": 1,
        })
    return orders, auths
