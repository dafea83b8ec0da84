"""What the bench's HTTP workloads send (no server: the request factory alone)."""

from __future__ import annotations

import json
import random
from collections import Counter
from uuid import uuid4

from bench.workloads import RequestFactory


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
