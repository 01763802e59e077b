from django.utils.translation import gettext_lazy as _

from loyalty.errors import Conflict, Forbidden, InvalidInput, LoyaltyError, NotFound


class CouponNotFound(NotFound):
    code = "coupon_not_found"
    message = _("No coupon with this code.")


class CouponAlreadyWrittenOff(Conflict):
    code = "coupon_already_written_off"
    message = _("This coupon was already used at %(store)s (terminal %(terminal)s, receipt %(receipt_no)s) on %(at)s.")


class CouponExpired(LoyaltyError):
    code = "coupon_expired"
    http_status = 410
    message = _("This coupon expired on %(valid_until)s.")


class CouponNotYetValid(Conflict):
    code = "coupon_not_yet_valid"
    message = _("This coupon can be used from %(valid_from)s.")


class CouponVoid(LoyaltyError):
    code = "coupon_void"
    http_status = 410
    message = _("This coupon was cancelled and cannot be used.")


class CouponWrongStore(Forbidden):
    code = "coupon_wrong_store"
    message = _("This coupon cannot be used at this store.")


class CouponNotMembers(Forbidden):
    code = "coupon_not_members"
    message = _("This coupon belongs to another member.")


class CouponBelowMinimumSpend(Conflict):
    code = "coupon_minimum_spend"
    message = _("This coupon needs a bill of at least %(min_spend)s.")


class CouponNotRestorable(Conflict):
    code = "coupon_not_restorable"
    message = _("This coupon cannot be changed in its current state (%(status)s).")


class BenefitNotFound(NotFound):
    code = "benefit_not_found"
    message = _("No such benefit.")


class BenefitUnavailable(Conflict):
    code = "benefit_unavailable"
    message = _("This benefit cannot be exchanged: %(reason)s")


class OutOfStock(Conflict):
    code = "out_of_stock"
    message = _("This benefit is out of stock.")


class MemberLimitReached(Conflict):
    code = "member_limit_reached"
    message = _("You already have the most coupons of this benefit allowed per member (%(limit)s).")


class InvalidCouponFile(InvalidInput):
    code = "invalid_coupon_file"
    message = _("The coupon file could not be read: %(reason)s")
