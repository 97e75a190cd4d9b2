from __future__ import annotations

from app.core.errors import Conflict, DomainError, Forbidden, NotFound, Unprocessable


class ListingNotFound(NotFound):
    code = "listing_not_found"
    title = "Listing not found"


class ExchangeNotFound(NotFound):
    code = "exchange_not_found"
    title = "Exchange not found"


class UnknownCategory(Unprocessable):
    code = "unknown_category"
    title = "Not one of this community's categories"


class PartyNotFound(Unprocessable):
    code = "party_not_found"
    title = "A party is not a member of this community"


class PartyNotActive(Conflict):
    code = "party_not_active"
    title = "A party's membership is not active"


class SelfExchange(Unprocessable):
    code = "self_exchange"
    title = "Nobody can exchange with themselves"


class DuplicateParty(Unprocessable):
    code = "duplicate_party"
    title = "A member appears twice in one exchange"


class ExchangeUnbalanced(Unprocessable):
    code = "unbalanced"
    title = "Providers' and receivers' minutes differ"


class OccurredOnOutOfRange(Unprocessable):
    code = "occurred_on_out_of_range"
    title = "Date of service is in the future or too far back"


class NotAParty(Forbidden):
    code = "not_a_party"
    title = "Only the exchange's parties or a coordinator may do this"


class ProposerMustBeParty(Forbidden):
    code = "proposer_not_party"
    title = "Members propose only exchanges they take part in"


class InvalidTransition(Conflict):
    code = "invalid_transition"
    title = "The exchange is not in a state that allows this"


class AlreadyConfirmed(Conflict):
    code = "already_confirmed"
    title = "Already confirmed"


class CannotConfirmOwnProposal(Conflict):
    code = "cannot_confirm_own_proposal"
    title = "The counterparty confirms, not the proposer"


class CoordinatorRequired(Forbidden):
    code = "coordinator_required"
    title = "A coordinator must do this"


class ThanksFromReceiversOnly(Unprocessable):
    code = "thanks_from_receivers_only"
    title = "Only people who received help leave a thank-you note"


class ListingNotEditable(Forbidden):
    code = "listing_not_editable"
    title = "Only the listing's owner or a coordinator may change it"


class FundNotFound(DomainError):  # pragma: no cover - every community gets a fund when created
    status = 500
    code = "fund_missing"
    title = "Community fund missing"
