"""A per-process directory of account owners, kinds, currencies (immutable facts, safe to cache)
and whether they are closed (a close is final: `forget` on its completion event reloads it)."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from api.groupcommit import Grouped
from worker.store import queries
from worker.store.fast import FastStore
from worker.store.queries import Record


class AccountDirectory:
    """Owner, kind and currency of accounts, cached per API process.

    Those three never change after an account is opened and accounts are never deleted, so
    the cache needs no invalidation; it spares the accept path a SELECT (balances are never
    cached). Bounded by simple eviction of the oldest entries. `closed_at` changes once: the
    completion of a close operation makes every API process forget the account (api/state.py),
    so its next submit reads it closed and answers 409; an operation that raced past the close
    fails account_closed when applied.
    """

    def __init__(self, db: FastStore, max_entries: int = 200_000) -> None:
        self._max = max_entries
        self._rows: dict[UUID, Record] = {}
        # Misses of concurrent requests share one SELECT (a cold cache under load).
        self._load: Grouped[UUID, dict[UUID, Record]] = Grouped(
            lambda ids: queries.accounts_by_ids(db, ids)
        )

    def forget(self, account_ids: Iterable[UUID]) -> None:
        for account_id in account_ids:
            self._rows.pop(account_id, None)

    async def lookup(self, account_ids: set[UUID]) -> dict[UUID, Record]:
        found = {i: self._rows[i] for i in account_ids if i in self._rows}
        missing = account_ids - found.keys()
        if missing:
            group = await self._load(list(missing))
            loaded = {i: group[i] for i in missing if i in group}
            if len(self._rows) + len(loaded) > self._max:
                for stale in list(self._rows)[: len(loaded) + self._max // 10]:
                    del self._rows[stale]
            self._rows.update(loaded)
            found.update(loaded)
        return found
