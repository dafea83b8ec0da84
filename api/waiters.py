"""Lets requests wait for operations and follow accounts: fed by the worker's completion events.

One Redis subscription per API process (api/state.py) feeds this registry; requests register here,
never with Redis, so a thousand followers cost one subscription.

Events get lost: Redis can fail between a worker's commit and its publish, and this process hears
nothing while it resubscribes. So the registry also looks at PostgreSQL itself, every
LEDGERQ_FOLLOW_RECHECK seconds while anyone follows (`watch`): one statement for every operation
waited on in this process (those already final are woken as their event would have), one for
every account followed (a follower whose balance has stayed behind the ledger for a whole
interval is told to re-read it). That costs the same however many events come and however many
followers there are; when events come, nothing else is read but what they announce.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import structlog

from worker.store.fast import first_line

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Completion events queued for one account follower before newer ones are dropped (a follower
# that far behind re-reads the balance anyway; the events only say what changed).
ACCOUNT_QUEUE_SIZE = 1000
# Seconds between PostgreSQL looks while anyone follows (LEDGERQ_FOLLOW_RECHECK).
DEFAULT_RECHECK = 2.0
# Queued to an account follower instead of a batch of events: "re-read the account".
REREAD: list[dict[str, Any]] = []

# The looks `watch` takes: operation ids -> those of them that are final; account ids -> balances.
FinalOperations = Callable[[list[str]], Awaitable[Iterable[str]]]
Balances = Callable[[list[str]], Awaitable[Mapping[str, int]]]


def raise_if_cancelled() -> None:
    """Background loops call this before sleeping. A cancellation that lands in a driver while it
    connects can come out as an ordinary error (caught and logged as a failed refresh); the task
    is then still marked as cancelling but its next sleep is not interrupted, and the lifespan
    shutdown that awaits it would wait forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class AccountFollower(asyncio.Queue[list[dict[str, Any]]]):
    """One WebSocket following an account: a queue of event batches (or REREAD), and the
    balance (minor units) it last sent, which the periodic look compares with the ledger."""

    def __init__(self) -> None:
        super().__init__(ACCOUNT_QUEUE_SIZE)
        self.balance: int | None = None
        # The ledger's balance seen by the previous look while this follower's differed.
        self._behind: int | None = None

    def sent(self, balance: int) -> None:
        self.balance = balance
        self._behind = None

    def compare(self, ledger: int | None) -> bool:
        """True when this follower must re-read: it has shown another balance than the ledger's
        for a whole interval (two looks saw the same ledger balance), so the event that would
        have told it is not coming. A difference seen once is an event still on its way."""
        if ledger is None or self.balance is None or ledger == self.balance:
            self._behind = None
            return False
        if self._behind != ledger:
            self._behind = ledger
            return False
        self._behind = None
        return True


class CompletionWaiters:
    """In-process registry of requests waiting on operation ids and of account followers.

    The event only wakes the waiter; the answer is always re-read from PostgreSQL, so a lost or
    duplicated event can delay an answer (by LEDGERQ_FOLLOW_RECHECK at most, see `watch`) but
    never change it.
    """

    def __init__(self, recheck: float = DEFAULT_RECHECK) -> None:
        self.recheck = recheck
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._following: dict[str, set[AccountFollower]] = {}
        self.looks = 0  # periodic looks at PostgreSQL that read something (tests read it)

    def dispatch(self, payload: bytes | str) -> None:
        if not self._waiting and not self._following:
            return  # nobody here is waiting: every batch of every worker arrives, skip the decode
        try:
            events = json.loads(payload)
        except ValueError:
            log.warning("completion_event_malformed")
            return
        touched: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            self._wake(str(event.get("id")))
            if self._following:
                for account in {event.get("account_id"), event.get("to_account_id")}:
                    if account is not None and str(account) in self._following:
                        touched.setdefault(str(account), []).append(event)
        for account, account_events in touched.items():
            for follower in self._following.get(account, ()):
                try:
                    follower.put_nowait(account_events)
                except asyncio.QueueFull:
                    log.warning("account_follower_behind", account_id=account)

    def _wake(self, operation_id: str) -> None:
        for waiter in self._waiting.get(operation_id, ()):
            waiter.set()

    @contextlib.contextmanager
    def watching(self, operation_id: str) -> Iterator[asyncio.Event]:
        """An event set when the operation's completion is announced (or found by `watch`),
        registered while inside."""
        event = asyncio.Event()
        self._waiting.setdefault(operation_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiting.get(operation_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiting[operation_id]

    @contextlib.contextmanager
    def following(self, account_id: str) -> Iterator[AccountFollower]:
        """A follower receiving the completion events (one list per applied batch) touching the
        account, as debited or credited account, while inside; REREAD when `watch` finds it
        behind the ledger."""
        follower = AccountFollower()
        self._following.setdefault(account_id, set()).add(follower)
        try:
            yield follower
        finally:
            followers = self._following.get(account_id)
            if followers is not None:
                followers.discard(follower)
                if not followers:
                    del self._following[account_id]

    def counts(self) -> tuple[int, int]:
        """(requests waiting on an operation, account followers) registered now."""
        return (
            sum(len(w) for w in self._waiting.values()),
            sum(len(f) for f in self._following.values()),
        )

    async def wait_until(
        self,
        operation_id: str,
        seconds: float,
        read: Callable[[], Awaitable[T]],
        done: Callable[[T], bool],
    ) -> T:
        """Read, and if not done, wait up to `seconds` for the completion (its event, or `watch`
        finding it final in PostgreSQL), then read again: the answer is always a fresh read."""
        with self.watching(operation_id) as event:
            # Registered before reading, so a completion between the read and the wait is not missed.
            current = await read()
            if done(current) or seconds <= 0:
                return current
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), seconds)
            return await read()

    async def look(self, final_operations: FinalOperations, balances: Balances) -> None:
        """One look at PostgreSQL for whoever follows now (nothing is read when nobody does)."""
        if self._waiting:
            self.looks += 1
            for operation_id in await final_operations(list(self._waiting)):
                self._wake(operation_id)
        if self._following:
            self.looks += 1
            ledger = await balances(list(self._following))
            for account, followers in list(self._following.items()):
                for follower in list(followers):
                    if follower.compare(ledger.get(account)):
                        log.info("account_follower_reread", account_id=account)
                        with contextlib.suppress(asyncio.QueueFull):
                            follower.put_nowait(REREAD)

    async def watch(self, final_operations: FinalOperations, balances: Balances) -> None:
        """Every `recheck` seconds, `look`; a failed look (PostgreSQL down) is logged and tried
        again next time."""
        while True:
            await asyncio.sleep(self.recheck)
            try:
                await self.look(final_operations, balances)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("follow_recheck_failed", error=first_line(exc))
            raise_if_cancelled()
