"""The followers' periodic look (api/waiters.py): what it wakes and whom it tells to re-read,
given what PostgreSQL answered; one look reads every waited operation and followed account at
once, and nothing when nobody follows."""

from __future__ import annotations

import json

from api.waiters import REREAD, CompletionWaiters


class Ledger:
    """What the two looks would read from PostgreSQL, and what they were asked."""

    def __init__(self) -> None:
        self.final: set[str] = set()
        self.balances: dict[str, int] = {}
        self.asked: list[tuple[str, list[str]]] = []

    async def final_operations(self, ids: list[str]) -> list[str]:
        self.asked.append(("operations", sorted(ids)))
        return [i for i in ids if i in self.final]

    async def read_balances(self, ids: list[str]) -> dict[str, int]:
        self.asked.append(("accounts", sorted(ids)))
        return {i: self.balances[i] for i in ids if i in self.balances}


async def test_a_look_wakes_the_waiters_of_final_operations_only() -> None:
    waiters, ledger = CompletionWaiters(), Ledger()
    await waiters.look(ledger.final_operations, ledger.read_balances)
    assert ledger.asked == []  # nobody follows: nothing read
    with (
        waiters.watching("op-1") as one,
        waiters.watching("op-2") as two,
        waiters.watching("op-1") as one_again,
    ):
        ledger.final = {"op-1"}
        await waiters.look(ledger.final_operations, ledger.read_balances)
        assert one.is_set() and one_again.is_set() and not two.is_set()
    # Every waited operation in one statement; no account followed, no account read.
    assert ledger.asked == [("operations", ["op-1", "op-2"])]


async def test_a_follower_behind_the_ledger_for_a_whole_interval_is_told_to_reread() -> None:
    waiters, ledger = CompletionWaiters(), Ledger()
    with waiters.following("acc") as follower, waiters.following("other") as other:
        follower.sent(100)
        other.sent(5)
        ledger.balances = {"acc": 100, "other": 5}
        await waiters.look(ledger.final_operations, ledger.read_balances)
        assert follower.empty() and other.empty()
        # Applied, and its event still on its way: one look sees a difference and waits.
        ledger.balances["acc"] = 170
        await waiters.look(ledger.final_operations, ledger.read_balances)
        assert follower.empty()
        # The next look sees the same difference: the event is not coming.
        await waiters.look(ledger.final_operations, ledger.read_balances)
        assert follower.get_nowait() is REREAD
        assert other.empty()
        follower.sent(170)  # the follower re-read and sent the account
        await waiters.look(ledger.final_operations, ledger.read_balances)
        assert follower.empty()
        assert ledger.asked[-1] == ("accounts", ["acc", "other"])


async def test_an_event_in_time_means_no_reread() -> None:
    waiters, ledger = CompletionWaiters(), Ledger()
    with waiters.following("acc") as follower:
        follower.sent(100)
        ledger.balances = {"acc": 130}
        await waiters.look(ledger.final_operations, ledger.read_balances)
        # The event arrives; the follower sends the update and its balance.
        waiters.dispatch(json.dumps([{"id": "op", "account_id": "acc", "status": "succeeded"}]))
        assert [e["id"] for e in follower.get_nowait()] == ["op"]
        follower.sent(130)
        await waiters.look(ledger.final_operations, ledger.read_balances)
        await waiters.look(ledger.final_operations, ledger.read_balances)
        assert follower.empty()
