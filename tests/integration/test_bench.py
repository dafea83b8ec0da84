"""`ledgerq bench` against the suite's real API and workers: short runs, their reports, their verification.

No timing assertions: the machine is shared; these prove the command works end to end and that
what it reports adds up.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from tests.integration.support import ROOT, LedgerClient
from worker.metrics import BATCH_BUCKETS, BATCH_FIELDS, BATCH_OVERFLOW
from worker.store.tables import accounts, operations, users

pytestmark = pytest.mark.integration


def bench(
    service_env: dict[str, str], tmp_path: Path, *args: str, status: int = 0
) -> tuple[dict[str, Any], str]:
    """Run the real command in a child process (expecting exit `status`); return its JSON report
    and its output."""
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "bench", *args, "--json", str(report)],
        cwd=ROOT,
        env={**os.environ, **service_env, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=170,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == status, output[-4000:]
    return json.loads(report.read_text()), output


def statuses(engine: Engine, username: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(operations.c.status, sa.func.count())
            .join(users, users.c.id == operations.c.principal_id)
            .where(users.c.username == username)
            .group_by(operations.c.status)
        ).all()
    return {r[0]: r[1] for r in rows}


def assert_verified(report: dict[str, Any]) -> None:
    verification = report["verification"]
    assert verification["passed"], verification
    assert {c["name"] for c in verification["checks"]} >= {
        "every operation terminal",
        "per currency, balances sum to 0",
        "every balance = sum of its entries",
        "no customer account below its floor",
    }


def assert_batch_sizes(report: dict[str, Any], output: str, operations: int) -> None:
    """The workers counted the run's batches: a histogram that adds up, at least `operations`
    operations in it (the counts are the deployment's, so other tests' batches may be in them)."""
    sizes = report["batch_sizes"]
    buckets = sizes["buckets"]
    assert list(buckets) == list(BATCH_FIELDS)
    assert sizes["batches"] == sum(buckets.values()) >= 1
    assert sizes["operations"] >= max(operations, 1)
    assert sizes["operations"] >= sizes["batches"]
    # Each bucket's batches hold between its lower and upper bound of operations each.
    lows = zip(BATCH_FIELDS, (1, *(b + 1 for b in BATCH_BUCKETS)), strict=True)
    assert sizes["operations"] >= sum(buckets[f] * low for f, low in lows)
    if not buckets[BATCH_OVERFLOW]:
        assert sizes["operations"] <= sum(buckets[str(b)] * b for b in BATCH_BUCKETS)
    assert sizes["mean"] == pytest.approx(sizes["operations"] / sizes["batches"], abs=0.01)
    assert sizes["p50"] is not None and sizes["p50"] <= sizes["p90"] <= sizes["p99"]
    assert "batch sizes" in output and f"{sizes['batches']:,} batches" in output


def test_spread_short_run_reports_and_verifies(
    api_url: str, engine: Engine, service_env: dict[str, str], tmp_path: Path
) -> None:
    username = f"bench-{secrets.token_hex(4)}"
    png = tmp_path / "spread.png"
    accounts_file = tmp_path / "accounts.txt"
    report, output = bench(
        service_env, tmp_path, "spread",
        "--url", api_url, "--username", username,
        "--duration", "2", "--rate", "40", "--concurrency", "8", "--accounts", "300",
        "--plot", str(png), "--write-accounts", str(accounts_file), "--seed", "7",
    )  # fmt: skip

    assert "PASS" in output
    assert report["workload"] == "spread"
    assert report["setup"]["accounts"] == 300
    assert len(accounts_file.read_text().split()) == 300
    http = report["http"]
    assert http["ok"] > 0 and http["failed"] == 0, http["errors"]
    for key in ("p50", "p90", "p99", "max"):
        assert http["latency_ms"][key] is not None
    applied = report["applied"]
    # Every accepted operation was found in PostgreSQL and reached a terminal state.
    assert applied["operations"] == http["ok"]
    assert applied["applied"] == http["ok"]
    assert set(applied["statuses"]) <= {"succeeded", "failed"}
    assert applied["latency_ms"]["count"] == http["ok"]
    timeline = report["timeline"]
    assert len(timeline["t"]) == len(timeline["ok"]) == len(timeline["applied"])
    assert sum(timeline["ok"]) == http["ok"]
    assert sum(timeline["applied"]) == http["ok"]
    assert "api" in report["memory"] and "worker" in report["memory"]
    assert report["memory"]["api"]["rss_peak_mb"] > 0
    assert_batch_sizes(report, output, http["ok"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_verified(report)
    assert statuses(engine, username).get("pending", 0) == 0
    # On a server without autovacuum the bench vacuums before the load, and says so.
    with engine.connect() as conn:
        autovacuum = conn.execute(sa.text("SHOW autovacuum")).scalar()
        last_vacuum = conn.execute(
            sa.text("SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'operations'")
        ).scalar()
    vacuumed = [n for n in report["notes"] if n.startswith("autovacuum is off")]
    if autovacuum == "off":
        assert vacuumed and last_vacuum is not None
    else:
        assert vacuumed == []


def test_drain_with_baseline_applies_everything_once(
    api_url: str, engine: Engine, service_env: dict[str, str], tmp_path: Path
) -> None:
    username = f"bench-{secrets.token_hex(4)}"
    report, output = bench(
        service_env, tmp_path, "drain",
        "--url", api_url, "--username", username,
        "--ops", "2000", "--accounts", "200", "--baseline", "--concurrency", "2",
    )  # fmt: skip

    assert report["prefill"]["operations"] == 2000
    drain = report["drain"]
    assert drain["operations"] == drain["applied"] == 2000
    assert drain["rate"] > 0
    # The batched drain only: the baseline applies its operations itself, the workers paused.
    assert_batch_sizes(report, output, 2000)
    baseline = report["baseline"]
    assert baseline["operations"] == 2000
    # The baseline paused the workers: it applied (or failed) every one of its operations itself.
    assert baseline["applied"] + sum(baseline["failed"].values()) == 2000
    assert baseline["taken_by_workers"] == 0
    assert report["speedup"] > 0
    assert_verified(report)
    # Funding (200) + drain (2,000) + baseline (2,000), all terminal.
    counts = statuses(engine, username)
    assert sum(counts.values()) == 4200 and counts.get("pending", 0) == 0


def test_drain_with_the_holds_mix_captures_every_hold_it_names(
    api_url: str, engine: Engine, service_env: dict[str, str], tmp_path: Path
) -> None:
    username = f"bench-{secrets.token_hex(4)}"
    report, output = bench(
        service_env, tmp_path, "drain",
        "--url", api_url, "--username", username, "--mix", "holds", "--seed", "5",
        "--ops", "1500", "--accounts", "100", "--baseline", "--concurrency", "2",
    )  # fmt: skip

    prefill = report["prefill"]
    assert prefill["mix"] == "holds" and report["options"]["mix"] == "holds"
    types = prefill["types"]
    assert types["hold"] + types["capture"] == 500
    assert types["deposit"] + types["withdrawal"] == 1000
    assert "mix holds" in output
    drain = report["drain"]
    # Every capture found its hold open: nothing failed, in the drain or in the baseline.
    assert drain["applied"] == 1500 and drain["statuses"] == {"succeeded": 1500}
    assert set(drain["cpu_ms_per_op"]) == {"worker", "postgres"}
    assert drain["cpu_s"]["worker"] > 0 and "CPU per operation" in output
    baseline = report["baseline"]
    assert baseline["applied"] == 1500 and baseline["failed"] == {}
    assert_verified(report)
    with engine.connect() as conn:
        holds: dict[str, int] = dict(
            conn.execute(
                sa.text(
                    "SELECT h.status, count(*) FROM holds h JOIN operations o ON o.id = h.id"
                    " JOIN users u ON u.id = o.principal_id WHERE u.username = :u"
                    " GROUP BY h.status"
                ),
                {"u": username},
            )
            .tuples()
            .all()
        )
    # Twice (drain and baseline) each hold: captured, or left open at the end.
    assert set(holds) <= {"open", "captured"}
    assert sum(holds.values()) == 2 * types["hold"]
    assert holds["captured"] == 2 * types["capture"]


def test_verify_checks_the_whole_ledger(
    api_url: str, service_env: dict[str, str], tmp_path: Path
) -> None:
    report, output = bench(service_env, tmp_path, "verify", "--settle-timeout", "60")
    assert_verified(report)
    assert "PASS" in output


def failed_checks(report: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["detail"] for c in report["verification"]["checks"] if not c["passed"]}


async def test_verify_checks_holds_and_reversals_and_names_a_corrupted_row(
    alice: LedgerClient,
    bob: LedgerClient,
    api_url: str,
    engine: Engine,
    service_env: dict[str, str],
    tmp_path: Path,
) -> None:
    a = await alice.create_account("USD")
    b = await bob.create_account("USD")
    await alice.deposit(a, "100.00")

    async def done(client: LedgerClient, body: dict[str, Any]) -> dict[str, Any]:
        result = await client.wait(await client.submit_ok(body))
        assert result["status"] == "succeeded", result
        return result

    captured = await done(alice, {"type": "hold", "account_id": a, "amount": "60.00",
                                  "to_account_id": b, "expires_in": 3600})  # fmt: skip
    voided = await done(alice, {"type": "hold", "account_id": a, "amount": "10.00"})
    await done(alice, {"type": "hold", "account_id": a, "amount": "5.00", "expires_in": 3600})
    capture = await done(alice, {"type": "capture", "hold_id": captured["id"], "amount": "25.00"})
    await done(alice, {"type": "void", "hold_id": voided["id"]})
    # The payee gives part of the capture back.
    await done(bob, {"type": "reversal", "operation_id": capture["id"], "amount": "5.00"})
    account = await alice.account(a)
    assert (account["balance"], account["held_balance"]) == ("80.00", "5.00")

    report, output = bench(service_env, tmp_path, "verify", "--settle-timeout", "60")
    assert_verified(report)
    names = {c["name"] for c in report["verification"]["checks"]}
    held_check = "every account's held = its open holds' total"
    reversed_check = "reversed_amount <= amount and = its succeeded reversals' total"
    assert {held_check, reversed_check} <= names

    # accounts.held one cent off: verify fails, names the check and the account, exits 1.
    with engine.begin() as conn:
        conn.execute(accounts.update().where(accounts.c.id == a).values(held=accounts.c.held + 1))
    try:
        report, output = bench(service_env, tmp_path, "verify", "--settle-timeout", "60", status=1)
    finally:
        with engine.begin() as conn:
            conn.execute(
                accounts.update().where(accounts.c.id == a).values(held=accounts.c.held - 1)
            )
    failed = failed_checks(report)
    assert set(failed) == {held_check}, failed
    assert failed[held_check].startswith("1 accounts differ, e.g. ") and a in failed[held_check]
    assert "FAIL" in output

    # The capture's reversed amount forgotten: the reversal check names the capture.
    capture_id = capture["id"]
    with engine.begin() as conn:
        conn.execute(
            operations.update().where(operations.c.id == capture_id).values(reversed_amount=0)
        )
    try:
        report, output = bench(service_env, tmp_path, "verify", "--settle-timeout", "60", status=1)
    finally:
        with engine.begin() as conn:
            conn.execute(
                operations.update().where(operations.c.id == capture_id).values(reversed_amount=500)
            )
    failed = failed_checks(report)
    assert set(failed) == {reversed_check}, failed
    assert capture_id in failed[reversed_check]

    report, _ = bench(service_env, tmp_path, "verify", "--settle-timeout", "60")
    assert_verified(report)
