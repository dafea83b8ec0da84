"""What the bench's HTTP workloads send (no server: the request factory alone)."""

from __future__ import annotations

import json
import random
from collections import Counter
from uuid import uuid4

import pytest

from bench.baseline import lanes
from bench.setup import prefill_rows
from bench.workloads import HOLD_CENTS, HOLD_EXPIRES_IN, RequestFactory, drain_specs
from worker.routing import partition_for


def test_the_mixed_workload_sends_deposits_withdrawals_and_transfers() -> None:
    accounts = [uuid4() for _ in range(20)]
    factory = RequestFactory("mixed", accounts, "soak-", 0, random.Random(7))
    requests = [factory(n) for n in range(3000)]
    kinds = Counter(json.loads(r.body or b"{}")["type"] for r in requests)
    assert set(kinds) == {"deposit", "withdrawal", "transfer"}
    # About a third transfers, the rest split between deposits and withdrawals.
    assert 800 < kinds["transfer"] < 1200
    assert {r.path for r in requests} == {"/api/v1/operations"}
    assert len({r.headers["Idempotency-Key"] for r in requests}) == 3000
    transfers = [json.loads(r.body or b"{}") for r in requests]
    assert all(t["to_account_id"] != t["account_id"] for t in transfers if t["type"] == "transfer")


def test_the_ordinary_drain_mix_is_deposits_and_withdrawals() -> None:
    accounts = [uuid4() for _ in range(50)]
    specs = drain_specs(random.Random(1), accounts, 3000)
    assert len(specs) == 3000
    kinds = Counter(s.type for s in specs)
    assert set(kinds) == {"deposit", "withdrawal"}
    assert 1300 < kinds["deposit"] < 1700
    assert all(s.hold is None and s.to_account_id is None for s in specs)
    with pytest.raises(ValueError, match="unknown drain mix"):
        drain_specs(random.Random(1), accounts, 10, "nope")


@pytest.mark.parametrize(("count", "seed"), [(30_000, 3), (20_001, 4), (7, 5), (1, 6), (0, 7)])
def test_the_holds_drain_mix_is_a_third_holds_and_captures_of_earlier_holds(
    count: int, seed: int
) -> None:
    accounts = [uuid4() for _ in range(200)]
    specs = drain_specs(random.Random(seed), accounts, count, "holds")

    assert len(specs) == count
    kinds = Counter(s.type for s in specs)
    assert set(kinds) <= {"deposit", "withdrawal", "hold", "capture"}
    # Exactly a third (rounded down) holds and captures; two thirds the ordinary mix.
    assert kinds["hold"] + kinds["capture"] == count // 3
    assert kinds["deposit"] + kinds["withdrawal"] == count - count // 3
    if count >= 3000:
        # Holds and captures about equal; a few holds are left open at the end.
        assert kinds["capture"] <= kinds["hold"] < 1.1 * kinds["capture"]
        assert 0.45 < kinds["deposit"] / (count - count // 3) < 0.55
    accounts_set = set(accounts)
    captured: set[int] = set()
    for n, spec in enumerate(specs):
        assert spec.account_id in accounts_set and spec.to_account_id is None
        assert spec.amount > 0
        if spec.type == "hold":
            assert spec.hold is None
            assert spec.expires_in == HOLD_EXPIRES_IN
            assert HOLD_CENTS[0] <= spec.amount <= HOLD_CENTS[1]
        elif spec.type == "capture":
            # An earlier hold of the same account (so the same partition, applied before it),
            # captured once, at most all of it.
            assert spec.hold is not None and spec.hold < n
            hold = specs[spec.hold]
            assert hold.type == "hold"
            assert hold.account_id == spec.account_id
            assert 0 < spec.amount <= hold.amount
            assert spec.hold not in captured
            captured.add(spec.hold)
        else:
            assert spec.hold is None and spec.expires_in is None
    if count >= 3000:
        # Both full and partial captures.
        full = sum(
            1 for s in specs if s.type == "capture" and s.amount == specs[s.hold or 0].amount
        )
        assert 0.4 < full / kinds["capture"] < 0.7


def test_the_holds_mix_spreads_over_the_accounts_and_is_repeatable() -> None:
    accounts = [uuid4() for _ in range(100)]
    specs = drain_specs(random.Random(11), accounts, 6000, "holds")
    assert specs == drain_specs(random.Random(11), accounts, 6000, "holds")
    held = {s.account_id for s in specs if s.type == "hold"}
    assert len(held) > 90
    # Holds and captures are spread through the run, not bunched at one end.
    positions = [n for n, s in enumerate(specs) if s.type in ("hold", "capture")]
    assert positions[0] < 100 and positions[-1] > 5900
    first_half = sum(1 for n in positions if n < 3000)
    assert 0.4 < first_half / len(positions) < 0.6


def test_prefill_rows_carry_the_hold_id_of_each_capture() -> None:
    """The drain's prefill gives each capture its hold's operation id and partition."""
    accounts = [uuid4() for _ in range(30)]
    specs = drain_specs(random.Random(2), accounts, 900, "holds")
    ids, rows = prefill_rows(specs, "k-", 8)
    assert len(ids) == len(rows) == len(set(ids)) == 900
    for spec, row in zip(specs, rows, strict=True):
        assert (row.type, row.account_id, row.amount) == (spec.type, spec.account_id, spec.amount)
        assert row.partition == partition_for(spec.account_id, 8)
        if spec.type == "capture":
            assert spec.hold is not None
            assert row.hold_id == ids[spec.hold]
            assert row.partition == rows[spec.hold].partition
        else:
            assert row.hold_id is None
        assert row.expires_in == spec.expires_in


def test_the_baseline_keeps_each_accounts_operations_in_order_on_one_thread() -> None:
    accounts = [uuid4() for _ in range(40)]
    specs = drain_specs(random.Random(9), accounts, 1200, "holds")
    ids = [uuid4() for _ in specs]
    split = lanes(ids, 4, [s.account_id for s in specs])
    assert sorted(i for lane in split for i in lane) == sorted(ids)
    position = {i: n for n, i in enumerate(ids)}
    thread_of = {i: k for k, lane in enumerate(split) for i in lane}
    for lane in split:
        assert [position[i] for i in lane] == sorted(position[i] for i in lane)
    for n, spec in enumerate(specs):
        if spec.hold is not None:
            assert thread_of[ids[n]] == thread_of[ids[spec.hold]]
    # Without keys: round robin, as before.
    assert lanes(ids, 4) == [ids[k::4] for k in range(4)]
