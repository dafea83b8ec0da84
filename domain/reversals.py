"""Reversals: which way money goes back, and how much of an operation is left to take back."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from domain.model import REVERSIBLE_TYPES, OperationStatus, OperationType


@dataclass(frozen=True, slots=True)
class Original:
    """What a reversal needs of the operation it reverses."""

    id: UUID
    type: OperationType
    status: OperationStatus
    account_id: UUID
    to_account_id: UUID | None
    amount: int
    reversed: int = 0

    @property
    def reversible(self) -> bool:
        return self.type in REVERSIBLE_TYPES and self.status == OperationStatus.SUCCEEDED

    @property
    def remaining(self) -> int:
        return self.amount - self.reversed


def reversal_accounts(original: Original, world_id: UUID) -> tuple[UUID, UUID]:
    """(debited, credited) of a reversal of `original`: its own movement the other way round.

    A deposit came from the world into account_id; a withdrawal went the other way; a transfer
    (and a capture with a payee) went account_id -> to_account_id; a capture without a payee went
    out to the world like a withdrawal.
    """
    if original.type == OperationType.DEPOSIT:
        return original.account_id, world_id
    if original.type == OperationType.WITHDRAWAL:
        return world_id, original.account_id
    if original.type in (OperationType.TRANSFER, OperationType.CAPTURE):
        payee = original.to_account_id if original.to_account_id is not None else world_id
        return payee, original.account_id
    raise ValueError(f"a {original.type} cannot be reversed")


def debited_by_reversal(original: Original) -> UUID | None:
    """The customer account a reversal of `original` takes money from; None when it is the world
    (a withdrawal's, or a capture's without a payee): only the admin may reverse those."""
    if original.type == OperationType.DEPOSIT:
        return original.account_id
    if original.type in (OperationType.TRANSFER, OperationType.CAPTURE):
        return original.to_account_id
    return None
