"""The ledger's schema: SQLAlchemy Core tables, the source Alembic compares migrations against."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

# Stable constraint names, so migrations can refer to them and autogenerate stays quiet.
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _timestamp(name: str, nullable: bool = False) -> sa.Column[object]:
    server_default = None if nullable else sa.func.now()
    return sa.Column(
        name, sa.DateTime(timezone=True), nullable=nullable, server_default=server_default
    )


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("password_hash", sa.Text, nullable=False),
    _timestamp("created_at"),
    # Case-insensitive uniqueness: "Alice" and "alice" are the same user.
    sa.Index("uq_users_username_lower", sa.func.lower(sa.text("username")), unique=True),
)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    # NULL for system accounts (world, custody), which belong to no user.
    sa.Column("owner_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), nullable=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("balance", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("overdraft_limit", sa.BigInteger, nullable=False, server_default="0"),
    # The sum of the account's open holds (what they have not yet captured or released): not
    # available to any later debit.
    sa.Column("held", sa.BigInteger, nullable=False, server_default="0"),
    # Set and cleared by freeze and unfreeze operations, in their partition's order: a frozen
    # account's debits fail (account_frozen), credits still apply.
    sa.Column("frozen", sa.Boolean, nullable=False, server_default=sa.false()),
    # Set by a close operation (zero balance, no open hold); a closed account takes no operation.
    _timestamp("closed_at", nullable=True),
    # The owner's string pairs (domain/metadata.py bounds them).
    sa.Column("metadata", JSONB, nullable=True),
    # System accounts are sharded by partition so partitions never contend on one hot row.
    sa.Column("shard", sa.SmallInteger, nullable=True),
    _timestamp("created_at"),
    _timestamp("updated_at"),
    sa.CheckConstraint("kind IN ('checking', 'savings', 'world', 'custody')", name="kind"),
    sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency"),
    sa.CheckConstraint("overdraft_limit >= 0", name="overdraft_limit"),
    sa.CheckConstraint("held >= 0", name="held"),
    # The last line of defence: a customer's balance less its holds never passes its overdraft
    # floor.
    sa.CheckConstraint(
        "kind IN ('world', 'custody') OR balance - held >= -overdraft_limit", name="balance_floor"
    ),
    sa.Index("ix_accounts_owner_id_id", "owner_id", "id"),
)

assets = sa.Table(
    "assets",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("ticker", sa.Text, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    _timestamp("created_at"),
    sa.CheckConstraint(
        "kind IN ('stock', 'fund', 'bond', 'etf', 'reit', 'crypto', 'other')", name="kind"
    ),
    sa.CheckConstraint("ticker ~ '^[A-Z0-9][A-Z0-9.\\-]{0,15}$'", name="ticker"),
    sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency"),
)

# Daily closing prices, e8 (10^-8 of the asset's currency per unit).
prices = sa.Table(
    "prices",
    metadata,
    sa.Column("asset_id", UUID(as_uuid=True), sa.ForeignKey("assets.id"), primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("close", sa.BigInteger, nullable=False),
    _timestamp("updated_at"),
    sa.CheckConstraint("close > 0", name="close_positive"),
)

# Operations that take money out of account_id (allocations debit cash too; a hold reserves it).
DEBIT_TYPES = ("withdrawal", "transfer", "allocation", "hold")
# Every operation type, and those that move no money (their amount is 0).
OPERATION_TYPES = (
    "deposit",
    "withdrawal",
    "transfer",
    "allocation",
    "redemption",
    "hold",
    "capture",
    "void",
    "reversal",
    "freeze",
    "unfreeze",
    "close",
)
CONTROL_TYPES = ("freeze", "unfreeze", "close")


def _sql_list(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


DEBIT_TYPES_SQL = _sql_list(DEBIT_TYPES)

operations = sa.Table(
    "operations",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    # Apply order within a partition; the identity never repeats.
    # No unique index: the identity never repeats, and every index costs the apply loop a write
    # per operation (status updates cannot be HOT: status is in partial-index predicates).
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
    sa.Column("partition", sa.SmallInteger, nullable=False),
    sa.Column("principal_id", UUID(as_uuid=True), nullable=False),
    sa.Column("idempotency_key", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("account_id", UUID(as_uuid=True), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("to_account_id", UUID(as_uuid=True), sa.ForeignKey("accounts.id"), nullable=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("error_code", sa.Text, nullable=True),
    sa.Column("error_message", sa.Text, nullable=True),
    sa.Column("category", sa.Text, nullable=True),
    sa.Column("description", sa.Text, nullable=True),
    # Investments: the asset; units_e8 (asked for, or settled); the close (e8) it traded at.
    sa.Column("asset_id", UUID(as_uuid=True), sa.ForeignKey("assets.id"), nullable=True),
    sa.Column("quantity", sa.BigInteger, nullable=True),
    sa.Column("price", sa.BigInteger, nullable=True),
    # A capture or void: the hold it settles (the hold operation's id).
    sa.Column("hold_id", UUID(as_uuid=True), nullable=True),
    # A hold: seconds from its apply until the expiry sweep voids it.
    sa.Column("expires_in", sa.Integer, nullable=True),
    # A reversal: the operation it reverses; on that operation, how much reversals took back.
    sa.Column("reversal_of", UUID(as_uuid=True), nullable=True),
    sa.Column("reversed_amount", sa.BigInteger, nullable=False, server_default="0"),
    # The submitter's string pairs (domain/metadata.py bounds them), part of the fingerprint.
    sa.Column("metadata", JSONB, nullable=True),
    _timestamp("created_at"),
    _timestamp("updated_at"),
    _timestamp("applied_at", nullable=True),
    # A redemption by quantity, and a reversal of "the rest", learn their amount at apply time;
    # account controls move no money.
    sa.CheckConstraint(
        "amount > 0 OR (type = 'redemption' AND quantity > 0 AND status <> 'succeeded')"
        " OR (type = 'reversal' AND amount = 0 AND status <> 'succeeded')"
        f" OR (type IN {_sql_list(CONTROL_TYPES)} AND amount = 0)",
        name="amount_positive",
    ),
    sa.CheckConstraint("status IN ('pending', 'succeeded', 'failed', 'cancelled')", name="status"),
    sa.CheckConstraint(f"type IN {_sql_list(OPERATION_TYPES)}", name="type"),
    sa.CheckConstraint(
        "reversed_amount >= 0 AND reversed_amount <= amount", name="reversed_amount"
    ),
    sa.UniqueConstraint("principal_id", "idempotency_key"),
    # The apply loop's work list: small, because only pending rows are in it.
    sa.Index(
        "ix_operations_pending_partition_seq",
        "partition",
        "seq",
        postgresql_where=sa.text("status = 'pending'"),
    ),
    # available_balance: pending debits of one account. Only debits, so that the apply loop's
    # query (pending rows of a partition) can never pick this index over the one above: with
    # statistics taken while nothing was pending, it did, and walked every pending row per batch.
    sa.Index(
        "ix_operations_pending_debits_account_id",
        "account_id",
        postgresql_where=sa.text(f"status = 'pending' AND type IN {DEBIT_TYPES_SQL}"),
    ),
    sa.Index("ix_operations_principal_id_seq", "principal_id", "seq"),
    sa.Index("ix_operations_account_id_seq", "account_id", "seq"),
    sa.Index(
        "ix_operations_to_account_id_seq",
        "to_account_id",
        "seq",
        postgresql_where=sa.text("to_account_id IS NOT NULL"),
    ),
    # GET /operations?metadata[key]=value: containment over the operations that have metadata.
    sa.Index(
        "ix_operations_metadata",
        "metadata",
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
        postgresql_where=sa.text("metadata IS NOT NULL"),
    ),
    # Captado and portfolios read applied investments by time.
    sa.Index(
        "ix_operations_investments_applied_at",
        "applied_at",
        postgresql_where=sa.text("type IN ('allocation', 'redemption') AND status = 'succeeded'"),
    ),
)

# What an account holds of an asset: units_e8 and the cash invested (average cost).
positions = sa.Table(
    "positions",
    metadata,
    sa.Column("account_id", UUID(as_uuid=True), sa.ForeignKey("accounts.id"), primary_key=True),
    sa.Column("asset_id", UUID(as_uuid=True), sa.ForeignKey("assets.id"), primary_key=True),
    sa.Column("units", sa.BigInteger, nullable=False),
    sa.Column("invested", sa.BigInteger, nullable=False),
    _timestamp("updated_at"),
    sa.CheckConstraint("units >= 0 AND invested >= 0", name="non_negative"),
)

# Holds: one row per hold that applied (its id is the hold operation's). `amount` is reserved on
# the account until a capture settles `captured` of it (releasing the rest), a void releases it
# all, or the expiry sweep's void does (status expired). Rows change only in the partition of
# their account, in queue order.
HOLD_STATUSES = ("open", "captured", "voided", "expired")
holds = sa.Table(
    "holds",
    metadata,
    sa.Column("id", UUID(as_uuid=True), sa.ForeignKey("operations.id"), primary_key=True),
    sa.Column("account_id", UUID(as_uuid=True), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("to_account_id", UUID(as_uuid=True), sa.ForeignKey("accounts.id"), nullable=True),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("captured", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("released", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("status", sa.Text, nullable=False, server_default="open"),
    _timestamp("expires_at"),
    _timestamp("created_at"),
    _timestamp("closed_at", nullable=True),
    # The operation that closed it (capture or void).
    sa.Column("closed_by", UUID(as_uuid=True), nullable=True),
    sa.CheckConstraint(f"status IN {_sql_list(HOLD_STATUSES)}", name="status"),
    sa.CheckConstraint(
        "amount > 0 AND captured >= 0 AND released >= 0 AND captured + released <= amount"
        " AND (status = 'open') = (captured + released = 0)"
        " AND (status = 'open' OR captured + released = amount)",
        name="amounts",
    ),
    sa.Index("ix_holds_account_id_id", "account_id", "id"),
    # The expiry sweep's work list: open holds by expiry.
    sa.Index("ix_holds_open_expires_at", "expires_at", postgresql_where=sa.text("status = 'open'")),
)

entries = sa.Table(
    "entries",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("account_id", UUID(as_uuid=True), sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("operation_id", UUID(as_uuid=True), sa.ForeignKey("operations.id"), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("balance_after", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("category", sa.Text, nullable=True),
    _timestamp("created_at"),
    # History pages walk this index newest first; ids grow in apply order per account
    # because entries of an account are written while its row is locked.
    sa.Index("ix_entries_account_id_id", "account_id", "id"),
    sa.Index("ix_entries_operation_id", "operation_id"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("user_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    # The secret's first characters: shown in listings and used to find the row. The secret
    # itself is never stored, only its SHA-256 (it has 256 random bits, so no slow hash is needed).
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("secret_hash", sa.LargeBinary, nullable=False),
    sa.Column("scopes", ARRAY(sa.Text), nullable=False),
    # Requests per rate limit window for this key; NULL: LEDGERQ_RATE_LIMIT.
    sa.Column("rate_limit", sa.Integer, nullable=True),
    _timestamp("created_at"),
    _timestamp("last_used_at", nullable=True),
    # From this moment the key is refused like an unknown one; NULL: it does not expire.
    _timestamp("expires_at", nullable=True),
    # Revoked keys stay for the record, but no lookup ever finds them.
    _timestamp("revoked_at", nullable=True),
    sa.CheckConstraint("rate_limit IS NULL OR rate_limit > 0", name="rate_limit_positive"),
    # One indexed lookup per request, over live keys only.
    sa.Index("ix_api_keys_live_prefix", "prefix", postgresql_where=sa.text("revoked_at IS NULL")),
    sa.Index("ix_api_keys_user_id_id", "user_id", "id"),
)

# Deposit limits (domain/limits.py), one row per subject (a user or an API key) and currency: the
# admin's own limits for it (NULL: the LEDGERQ_DEPOSIT_* default) and its rolling day of deposits,
# sums per 15-minute bucket, the last one being bucket `window_head`. Intake locks a subject's row
# in the group commit that stores its deposits, so the window is exact across API processes.
deposit_limits = sa.Table(
    "deposit_limits",
    metadata,
    # A users.id or an api_keys.id (both UUIDv7, never equal), as subject_kind says.
    sa.Column("subject_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("currency", sa.String(3), primary_key=True),
    sa.Column("subject_kind", sa.Text, nullable=False),
    sa.Column("per_operation", sa.BigInteger, nullable=True),
    sa.Column("daily", sa.BigInteger, nullable=True),
    sa.Column("window_head", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("window_sums", ARRAY(sa.BigInteger), nullable=False, server_default="{}"),
    _timestamp("updated_at"),
    sa.CheckConstraint("subject_kind IN ('user', 'api_key')", name="subject_kind"),
    sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency"),
    sa.CheckConstraint(
        "(per_operation IS NULL OR per_operation > 0) AND (daily IS NULL OR daily > 0)",
        name="limits_positive",
    ),
)

# Webhooks (domain/webhooks.py). An endpoint receives the events of its owner's accounts (the
# owner of an operation's `account_id`), or of every account when owner_id is NULL (the admin's).
# The secret signs deliveries, so it is stored as is (the database holds it, like the data the
# events carry); a rotated-out one keeps signing too until previous_secret_expires_at.
webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("owner_id", UUID(as_uuid=True), sa.ForeignKey("users.id"), nullable=True),
    # Who registered it: a user's id, or the master key's (no user).
    sa.Column("created_by", UUID(as_uuid=True), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("events", ARRAY(sa.Text), nullable=False),
    sa.Column("description", sa.Text, nullable=True),
    sa.Column("secret", sa.Text, nullable=False),
    sa.Column("previous_secret", sa.Text, nullable=True),
    _timestamp("previous_secret_expires_at", nullable=True),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("disabled_reason", sa.Text, nullable=True),
    _timestamp("disabled_at", nullable=True),
    # The first failed attempt since the last success: failing for LEDGERQ_WEBHOOK_RETRY_PERIOD
    # disables the endpoint.
    _timestamp("failing_since", nullable=True),
    # Deleted endpoints stay, disabled and without their secret: the apply statement inserts
    # deliveries referencing endpoints, and a row deleted under it would fail its batch.
    _timestamp("deleted_at", nullable=True),
    _timestamp("created_at"),
    _timestamp("updated_at"),
    sa.CheckConstraint("enabled = (disabled_at IS NULL)", name="disabled_at"),
    sa.CheckConstraint("deleted_at IS NULL OR NOT enabled", name="deleted_disabled"),
    # The apply transaction joins a batch's account owners with the enabled endpoints.
    sa.Index("ix_webhook_endpoints_owner_id_id", "owner_id", "id"),
)

# The outbox: one row per event and endpoint, written in the transaction that applied (or
# cancelled) the operation, so an event exists exactly when its operation's outcome does. The
# dispatcher (worker/webhooks.py) claims due rows, POSTs them and records each attempt.
WEBHOOK_DELIVERY_STATUSES = ("pending", "succeeded", "failed")
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    # UUIDv7, made by the SQL that writes the row.
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    # domain/webhooks.py event_id: the same for every endpoint and every attempt.
    sa.Column("event_id", UUID(as_uuid=True), nullable=False),
    sa.Column(
        "endpoint_id",
        UUID(as_uuid=True),
        sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("event_type", sa.Text, nullable=False),
    # No foreign key: the apply statement would check it for every row it writes.
    sa.Column("operation_id", UUID(as_uuid=True), nullable=False),
    # The operation (and hold) rows as the transaction left them: the body is fixed when written.
    sa.Column("payload", JSONB, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    # When a dispatcher may take it next; while one holds it, the end of its claim.
    _timestamp("next_attempt_at"),
    # The claim of the dispatcher delivering it now: only that one records the attempt.
    sa.Column("claim", UUID(as_uuid=True), nullable=True),
    # No retry after this; NULL: created_at + LEDGERQ_WEBHOOK_RETRY_PERIOD.
    _timestamp("give_up_at", nullable=True),
    _timestamp("last_attempt_at", nullable=True),
    sa.Column("last_status_code", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_duration_ms", sa.Integer, nullable=True),
    # The latest attempts, oldest first: at, duration_ms, status_code, error.
    sa.Column("attempt_log", JSONB, nullable=False, server_default="[]"),
    _timestamp("created_at"),
    _timestamp("delivered_at", nullable=True),
    sa.CheckConstraint(f"status IN {_sql_list(WEBHOOK_DELIVERY_STATUSES)}", name="status"),
    sa.UniqueConstraint("event_id", "endpoint_id"),
    # The dispatcher's work list: pending rows by due time.
    sa.Index(
        "ix_webhook_deliveries_due",
        "next_attempt_at",
        postgresql_where=sa.text("status = 'pending'"),
    ),
    sa.Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
)
