"""The benchmarks run long, in `make bench` only; here, cheaply, that they still fit the code they measure."""
from __future__ import annotations

import sqlite3


def test_every_benchmark_imports_and_the_drain_backlog_is_stored_as_the_gateway_stores_it(tmp_path):
    from bench import __main__ as bench_main
    from bench import gateway_drain

    assert all(hasattr(module, "figures") for module in bench_main.BENCHMARKS)
    gateway_drain.fill(tmp_path / "gateway.db", 50)
    with sqlite3.connect(tmp_path / "gateway.db") as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT rid) FROM ratings").fetchone() == (50, 50)
        assert conn.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()[0] == 50
