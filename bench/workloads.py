"""What each workload sends: operation mixes, and the HTTP request carrying the n-th unit of work."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

import msgspec

from bench import DRAIN_MIXES

# Every bench account and operation is in this currency.
CURRENCY = "USD"
CATEGORY = "bench"

# Amounts in cents. Deposits are larger on average than withdrawals, so funded balances only
# grow and a long run does not drift into insufficient_funds.
DEPOSIT_CENTS = (100, 10_000)
WITHDRAWAL_CENTS = (100, 5_000)
TRANSFER_CENTS = (1, 1_000)

HTTP_WORKLOADS = ("spread", "hot", "transfers", "mixed", "read")
_JSON = {"Content-Type": "application/json"}
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class OpSpec:
    """An operation the bench submits or prefills; amount in minor units. A capture names the
    hold it settles by that hold's index in the same list of specs (`hold`); a hold has its
    life in seconds (`expires_in`)."""

    type: str
    account_id: UUID
    amount: int
    to_account_id: UUID | None = None
    hold: int | None = None
    expires_in: int | None = None


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]
    units: int  # operations carried (a batch carries many), or 1 read


def deposit_or_withdrawal(rng: random.Random, accounts: Sequence[UUID]) -> OpSpec:
    account = accounts[rng.randrange(len(accounts))]
    if rng.random() < 0.5:
        return OpSpec("deposit", account, rng.randint(*DEPOSIT_CENTS))
    return OpSpec("withdrawal", account, rng.randint(*WITHDRAWAL_CENTS))


def transfer(rng: random.Random, accounts: Sequence[UUID]) -> OpSpec:
    """Between two random accounts: their partitions differ 7 times in 8 with 8 partitions."""
    source, target = rng.sample(range(len(accounts)), 2)
    return OpSpec("transfer", accounts[source], rng.randint(*TRANSFER_CENTS), accounts[target])


def mixed(rng: random.Random, accounts: Sequence[UUID]) -> OpSpec:
    """The soak's money mix: a third transfers, the rest deposits and withdrawals."""
    return transfer(rng, accounts) if rng.random() < 1 / 3 else deposit_or_withdrawal(rng, accounts)


def mix_for(workload: str) -> Callable[[random.Random, Sequence[UUID]], OpSpec]:
    return {"transfers": transfer, "mixed": mixed}.get(workload, deposit_or_withdrawal)


def amount_text(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def operation_body(spec: OpSpec) -> dict[str, str]:
    body = {
        "type": spec.type,
        "account_id": str(spec.account_id),
        "amount": amount_text(spec.amount),
        "category": CATEGORY,
    }
    if spec.to_account_id is not None:
        body["to_account_id"] = str(spec.to_account_id)
    return body


@dataclass
class RequestFactory:
    """Builds the n-th request of a run: unique idempotency keys `{key_prefix}{n}` (or `-{n}.{i}`)."""

    workload: str
    accounts: Sequence[UUID]
    key_prefix: str
    batch: int
    rng: random.Random

    def __post_init__(self) -> None:
        if self.workload in ("transfers", "mixed") and len(self.accounts) < 2:
            raise ValueError(f"{self.workload} needs at least 2 accounts")
        self._mix = mix_for(self.workload)

    @property
    def units_per_request(self) -> int:
        return self.batch if self.batch and self.workload != "read" else 1

    def __call__(self, n: int) -> HttpRequest:
        if self.workload == "read":
            account = self.accounts[self.rng.randrange(len(self.accounts))]
            return HttpRequest("GET", f"/api/v1/accounts/{account}", None, {}, 1)
        if self.batch:
            items = []
            for i in range(self.batch):
                item = operation_body(self._mix(self.rng, self.accounts))
                item["idempotency_key"] = f"{self.key_prefix}{n}.{i}"
                items.append(item)
            body = _encode({"operations": items})
            return HttpRequest("POST", "/api/v1/operations/batch", body, _JSON, self.batch)
        body = _encode(operation_body(self._mix(self.rng, self.accounts)))
        headers = {**_JSON, "Idempotency-Key": f"{self.key_prefix}{n}"}
        return HttpRequest("POST", "/api/v1/operations", body, headers, 1)


HOLD_CENTS = WITHDRAWAL_CENTS
# Longer than any run: no hold expires (and is voided by the sweep) while the bench measures.
HOLD_EXPIRES_IN = 86_400


def holds_specs(rng: random.Random, accounts: Sequence[UUID], count: int) -> list[OpSpec]:
    """One third holds and captures, two thirds the ordinary deposits and withdrawals.

    Exactly `count // 3` positions, drawn at random, are holds or captures. At each, a capture of
    an earlier hold not yet captured (chosen at random; half of the time when one exists), else a
    new hold (1.00-50.00) on a random account, so holds and captures come out about equal. A
    capture acts on its hold's account (its partition, so it applies after its hold) and takes all
    of the hold half of the time, a random part of it otherwise; the hold has no payee, so the
    capture pays out to the world, as a withdrawal does. Holds left at the end stay open. Every
    bench account is funded far beyond what its holds and withdrawals take, so all succeed.
    """
    special = [n < count // 3 for n in range(count)]
    rng.shuffle(special)
    specs: list[OpSpec] = []
    uncaptured: list[int] = []  # indexes in `specs` of holds no capture settles yet
    for held in special:
        if not held:
            specs.append(deposit_or_withdrawal(rng, accounts))
        elif uncaptured and rng.random() < 0.5:
            pick = rng.randrange(len(uncaptured))
            index = uncaptured[pick]
            uncaptured[pick] = uncaptured[-1]
            uncaptured.pop()
            hold = specs[index]
            amount = hold.amount if rng.random() < 0.5 else rng.randint(1, hold.amount)
            specs.append(OpSpec("capture", hold.account_id, amount, hold=index))
        else:
            account = accounts[rng.randrange(len(accounts))]
            uncaptured.append(len(specs))
            specs.append(
                OpSpec("hold", account, rng.randint(*HOLD_CENTS), expires_in=HOLD_EXPIRES_IN)
            )
    return specs


def drain_specs(
    rng: random.Random, accounts: Sequence[UUID], count: int, mix: str = "ordinary"
) -> list[OpSpec]:
    """The drain's prefilled operations over the accounts (so, every partition): "ordinary",
    deposits and withdrawals; "holds", a third of them holds and captures (holds_specs)."""
    if mix == "holds":
        return holds_specs(rng, accounts, count)
    if mix != "ordinary":
        raise ValueError(f"unknown drain mix {mix!r} (one of {', '.join(DRAIN_MIXES)})")
    return [deposit_or_withdrawal(rng, accounts) for _ in range(count)]
