"""Why the ledger refuses a posting. Every refusal leaves the books exactly as they were."""

from __future__ import annotations

from app.core.errors import Conflict, DomainError, NotFound, Unprocessable


class LedgerError(DomainError):
    """Base of every refusal the posting engine makes."""

    # Which of the requests given to the engine was refused (set when an atomic call of many
    # postings stops at one), so a batch can say which item it was.
    index: int | None = None


class Unbalanced(LedgerError, Unprocessable):
    code = "unbalanced"
    title = "Entries do not sum to zero"


class TooFewEntries(LedgerError, Unprocessable):
    code = "too_few_entries"
    title = "A transaction needs at least two entries"


class ZeroAmount(LedgerError, Unprocessable):
    code = "zero_amount"
    title = "An entry of zero minutes means nothing"


class AmountOutOfRange(LedgerError, Unprocessable):
    code = "amount_out_of_range"
    title = "An entry is larger than the ledger accepts"


class DuplicateAccount(LedgerError, Unprocessable):
    code = "duplicate_account"
    title = "An account appears twice in one transaction"


class AccountNotFound(LedgerError, NotFound):
    code = "account_not_found"
    title = "Account not found"


class AccountClosed(LedgerError, Conflict):
    code = "account_closed"
    title = "Account is closed"


class InsufficientBalance(LedgerError, Conflict):
    code = "insufficient_balance"
    title = "Insufficient balance"


class OverBalanceCap(LedgerError, Conflict):
    code = "over_balance_cap"
    title = "Balance cap exceeded"


class TransactionNotFound(LedgerError, NotFound):
    code = "transaction_not_found"
    title = "Transaction not found"


class AlreadyReversed(LedgerError, Conflict):
    code = "already_reversed"
    title = "Transaction already reversed"


class ReversalNotReversible(LedgerError, Conflict):
    code = "reversal_not_reversible"
    title = "A reversal cannot itself be reversed"


class InvalidLimits(LedgerError, Unprocessable):
    code = "invalid_limits"
    title = "Account limits are not valid"


class IdempotencyKeyReused(Unprocessable):
    code = "idempotency_key_reused"
    title = "Idempotency-Key already used for a different request"


class IdempotencyInProgress(Conflict):
    code = "idempotency_in_progress"
    title = "A request with this Idempotency-Key is still running"


class BatchRefused(Unprocessable):
    code = "batch_refused"
    title = "An atomic batch was refused; nothing was posted"


class LedgerBusy(DomainError):
    status = 503
    code = "ledger_busy"
    title = "The ledger is busy; retry with the same Idempotency-Key"
