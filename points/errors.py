from django.utils.translation import gettext_lazy as _

from loyalty.errors import Conflict, Forbidden, InvalidInput, LoyaltyError, NotFound


class InsufficientPoints(Conflict):
    code = "insufficient_points"
    message = _("Not enough points: %(available)s available, %(requested)s requested.")


class PointsOverCap(InvalidInput):
    code = "points_over_cap"
    message = _("At most %(max_points)s points can pay for this bill.")


class InvalidPoints(InvalidInput):
    code = "invalid_points"
    message = _("Points must be a whole number greater than zero.")


class DuplicateReceipt(Conflict):
    code = "duplicate_receipt"
    message = _("Receipt %(receipt_no)s was already recorded at this store.")


class PurchaseNotFound(NotFound):
    code = "purchase_not_found"
    message = _("No purchase with receipt %(receipt_no)s at this store.")


class DuplicateRefund(Conflict):
    code = "duplicate_refund"
    message = _("Refund %(refund_no)s was already applied.")


class RefundExceedsPurchase(Conflict):
    code = "refund_exceeds_purchase"
    message = _("The refund is larger than what remains refundable (%(refundable)s).")


class InvalidAmount(InvalidInput):
    code = "invalid_amount"
    message = _("The amount must be greater than zero.")


class InvalidPaidAt(InvalidInput):
    code = "invalid_paid_at"
    message = _("paid_at must be within the last %(days)s days and not in the future.")


class ClaimNotAllowed(Conflict):
    code = "claim_not_allowed"
    message = _("This receipt cannot be claimed: %(reason)s")


class AlreadyCheckedIn(Conflict):
    code = "already_checked_in"
    message = _("You have already checked in today.")


class AdjustmentNotPending(Conflict):
    code = "adjustment_not_pending"
    message = _("This adjustment was already decided.")


class SelfApprovalForbidden(Forbidden):
    code = "self_approval_forbidden"
    message = _("A second operator must approve an adjustment you requested.")


class LedgerImmutable(LoyaltyError):
    code = "ledger_immutable"
    http_status = 409
    message = _("Ledger entries cannot be changed; add a correcting entry instead.")
