"""Import speed: parse and upsert N synthetic orders and auths into a fresh SQLite file.

    python bench/intake.py [N ...]        (default 100000)

Prints seconds to parse and to write, for orders and auths, and orders per second.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.synthetic import orders_and_auths  # noqa: E402
from gateway.app import MODELS  # noqa: E402
from infra.db import bind, migrate, open_database  # noqa: E402
from worklist.gate import Gate  # noqa: E402
from worklist.intake import parse_auths, parse_orders  # noqa: E402
from worklist.policy import PayerPolicy  # noqa: E402


def run(count: int) -> None:
    orders, auths = orders_and_auths(count, first_day=dt.date(2026, 12, 1), days=max(count // 400, 1))
    with tempfile.TemporaryDirectory() as folder:
        order_text = "\n".join(json.dumps(o) for o in orders)
        auth_text = json.dumps(auths)
        db = open_database(f"sqlite:///{folder}/bench.db")
        bind(db, MODELS)
        migrate(db, MODELS)
        now = dt.datetime(2026, 11, 30, 8, 0)
        gate = Gate(db, PayerPolicy(), lambda: now)
        t0 = time.perf_counter()
        parsed_orders = parse_orders(order_text)
        t1 = time.perf_counter()
        gate.import_orders(parsed_orders)
        t2 = time.perf_counter()
        parsed_auths = parse_auths(auth_text)
        t3 = time.perf_counter()
        gate.import_auths(parsed_auths)
        t4 = time.perf_counter()
        again = time.perf_counter()
        gate.import_orders(parsed_orders)  # the same file again: every record an update
        t5 = time.perf_counter()
        db.close()
    print(f"{count:>7} orders: parse {t1 - t0:6.2f}s  write {t2 - t1:6.2f}s  "
          f"({count / (t2 - t0):,.0f} orders/s); re-import as updates {t5 - again:6.2f}s")
    print(f"{count:>7} auths:  parse {t3 - t2:6.2f}s  write {t4 - t3:6.2f}s")


if __name__ == "__main__":
    for n in [int(a) for a in sys.argv[1:]] or [100_000]:
        run(n)
