"""Holds: money reserved on an account until a capture settles it or a void releases it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID

# The principal the expiry sweep submits its voids under (no user has it): its idempotency keys
# never meet a client's, and the apply knows the void for an expiry.
EXPIRY_PRINCIPAL = UUID("00000000-0000-7000-8000-00000000e1a0")


def expiry_key(hold_id: UUID) -> str:
    """The idempotency key of the expiry void of a hold: one per hold, however often swept."""
    return f"hold-expiry:{hold_id}"


class HoldStatus(StrEnum):
    OPEN = "open"
    CAPTURED = "captured"
    VOIDED = "voided"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Hold:
    """A hold's state. While open, `amount` counts in its account's `held`; once closed,
    `captured + released == amount`. `expires_in` is the new hold's life in seconds (the store
    dates its expiry from the apply); None for a hold read back from the store."""

    id: UUID
    account_id: UUID
    to_account_id: UUID | None
    currency: str
    amount: int
    captured: int = 0
    released: int = 0
    status: HoldStatus = HoldStatus.OPEN
    expires_in: int | None = None
    # The capture or void that closed it.
    closed_by: UUID | None = None

    @property
    def is_open(self) -> bool:
        return self.status == HoldStatus.OPEN


def settle(hold: Hold, captured: int, by: UUID) -> Hold:
    """The hold after a capture of `captured` (0 < captured <= amount): the rest is released."""
    if not hold.is_open or not 0 < captured <= hold.amount:
        raise ValueError(f"cannot capture {captured} of hold {hold.id} ({hold.status})")
    return _closed(hold, captured, HoldStatus.CAPTURED, by)


def release(hold: Hold, by: UUID, *, expired: bool = False) -> Hold:
    """The hold after a void (or the expiry sweep's void): all of it released."""
    if not hold.is_open:
        raise ValueError(f"hold {hold.id} is already {hold.status}")
    return _closed(hold, 0, HoldStatus.EXPIRED if expired else HoldStatus.VOIDED, by)


def _closed(hold: Hold, captured: int, status: HoldStatus, by: UUID) -> Hold:
    return Hold(
        id=hold.id,
        account_id=hold.account_id,
        to_account_id=hold.to_account_id,
        currency=hold.currency,
        amount=hold.amount,
        captured=captured,
        released=hold.amount - captured,
        status=status,
        expires_in=hold.expires_in,
        closed_by=by,
    )
