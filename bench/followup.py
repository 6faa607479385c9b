"""Cost of the rule 7 and no-MPPS additions on a database of N archived studies (SQLite, in process).

    python bench/followup.py [N ...]        (default 10000 100000)

For each N it fills a fresh gateway folder with N completed orders, each with one archived
study (a tenth of the patients with two orders for the same CPT code), then times:

- the duplicate look-up the receive path makes once per study (:meth:`store.store.Store.prior_studies`),
  median over 200 orders;
- the worklist decision of one day's orders (400) with and without 200 necessity policies on file;
- one run of the ``report_watch`` job (every study overdue: all flagged, then a second run
  that finds them flagged already);
- one run of the ``complete_without_mpps`` job over 1000 scheduled orders with archived studies.
"""

from __future__ import annotations

import datetime as dt
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import jobs  # noqa: E402
from gateway.app import open_app  # noqa: E402
from gateway.settings import load  # noqa: E402
from store.models import StudyRow  # noqa: E402
from tests.conftest import write_settings  # noqa: E402
from worklist import records  # noqa: E402
from worklist.necessity import NecessityPolicy  # noqa: E402
from worklist.orders import Order  # noqa: E402

START = dt.datetime(2026, 11, 1, 8, 0)


def order(i: int, status: str = "completed") -> Order:
    return Order(
        accession_number=f"A{i:07d}", patient_id=f"P{i // 2 if i % 10 == 0 else i:07d}", patient_name="DOE^JANE",
        birth_date=dt.date(1980, 1, 1), cpt="71046", modality="DX",
        scheduled_start=START + dt.timedelta(minutes=i % 20000), station_ae="DX1", ordering_npi="1234567893",
        facility_npi="1987654328", payer_id=f"PAYER{i % 50}", status=status, diagnoses=("R05.9",),
        study_instance_uid=f"1.2.826.0.1.3680043.8.498.{i + 1}",
    )


def run(count: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        clock_now = [START]
        app = open_app(load(write_settings(Path(folder)), environ={}), clock=lambda: clock_now[0])
        orders = [order(i) for i in range(count)]
        records.upsert_orders(app.db, orders, START, user="bench", source="bench")
        with app.db.atomic():
            rows = [dict(study_instance_uid=o.study_instance_uid, state="archived", accession_number=o.accession_number,
                         order_accession=o.accession_number, patient_id=o.patient_id, study_date="20261101",
                         first_received_at=START, last_received_at=START, state_changed_at=START, instance_count=1)
                    for o in orders]
            for first in range(0, len(rows), 500):
                StudyRow.insert_many(rows[first:first + 500]).execute()

        times = []
        for o in orders[:: max(count // 200, 1)][:200]:
            t0 = time.perf_counter()
            app.store.prior_studies(o)
            times.append(time.perf_counter() - t0)
        lookup = statistics.median(times) * 1000

        day = orders[:400]
        t0 = time.perf_counter()
        app.gate.decide(day)
        plain = time.perf_counter() - t0
        policies = [NecessityPolicy(f"PAYER{p % 50}", (f"{71000 + p:05d}-{71046 + p:05d}",), ("R05", "J18"))
                    for p in range(200)]
        records.replace_necessity(app.db, policies, START, user="bench", source="bench")
        t0 = time.perf_counter()
        app.gate.decide(day)
        with_policies = time.perf_counter() - t0

        clock_now[0] = START + dt.timedelta(days=10)
        t0 = time.perf_counter()
        first = jobs.run_job(app, "report_watch")
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        jobs.run_job(app, "report_watch")
        second_s = time.perf_counter() - t0

        scheduled = [order(count + i, status="scheduled") for i in range(1000)]
        for o in scheduled:
            object.__setattr__(o, "scheduled_start", clock_now[0] - dt.timedelta(hours=3))
        records.upsert_orders(app.db, scheduled, clock_now[0], user="bench", source="bench")
        with app.db.atomic():
            rows = [dict(study_instance_uid=o.study_instance_uid, state="archived", accession_number=o.accession_number,
                         order_accession=o.accession_number, patient_id=o.patient_id, study_date="20261111",
                         first_received_at=clock_now[0] - dt.timedelta(hours=2), last_received_at=clock_now[0],
                         state_changed_at=clock_now[0], instance_count=1) for o in scheduled]
            for start in range(0, len(rows), 500):
                StudyRow.insert_many(rows[start:start + 500]).execute()
        t0 = time.perf_counter()
        done = jobs.run_job(app, "complete_without_mpps")
        complete_s = time.perf_counter() - t0
        app.close()
    print(f"{count:>7} archived studies: duplicate look-up per study median {lookup:.2f} ms; "
          f"decide 400 orders {plain * 1000:.0f} ms, with 200 necessity policies {with_policies * 1000:.0f} ms")
    print(f"{'':>7} report_watch: {first.counts['overdue_flagged']} flagged in {first_s:.2f} s, "
          f"second run {second_s:.2f} s; complete_without_mpps: {done.counts['completed']} completed in "
          f"{complete_s:.2f} s")


if __name__ == "__main__":
    logging.disable(logging.WARNING)  # the watch warns once per flag: thousands of lines here
    for n in [int(a) for a in sys.argv[1:]] or [10_000, 100_000]:
        run(n)
