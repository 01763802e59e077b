from django.utils.translation import gettext_lazy as _

from loyalty.errors import Conflict, Forbidden, InvalidInput, LoyaltyError, NotFound


class InvalidPhone(InvalidInput):
    code = "invalid_phone"
    message = _("“%(phone)s” is not a valid mobile phone number.")


class PhoneTakenByOther(Conflict):
    code = "phone_registered_to_other"
    message = _("This phone number is already registered to a member with different details.")


class UnknownStore(NotFound):
    code = "unknown_store"
    message = _("No store with code “%(store)s”.")


class MemberNotFound(NotFound):
    code = "member_not_found"
    message = _("No member matches this code, member number or phone.")


class MemberFrozen(Forbidden):
    code = "member_frozen"
    http_status = 409
    message = _("This member account is frozen; it cannot earn or spend points. Ask the member to contact support.")


class MemberClosed(Forbidden):
    code = "member_closed"
    http_status = 409
    message = _("This member account is closed.")


class MemberStatusUnchanged(Conflict):
    code = "member_status_unchanged"
    message = _("The member is already %(status)s.")


class InvalidMemberCode(InvalidInput):
    code = "invalid_member_code"
    message = _("This member code is not valid. Ask the member to show the code again.")


class MemberCodeExpired(LoyaltyError):
    code = "code_expired"
    http_status = 410
    message = _("This member code has expired. Ask the member to refresh the code.")


class MemberCodeRequired(Forbidden):
    code = "member_code_required"
    message = _("Using points or coupons needs the member's current code. Scan the member's code.")


class MemberCodeAlreadyUsed(Conflict):
    code = "code_already_used"
    message = _("This member code was already used for a purchase. Ask the member to refresh the code.")


class WechatLoginFailed(LoyaltyError):
    code = "wechat_login_failed"
    http_status = 401
    message = _("WeChat login failed: %(reason)s")


class WechatSessionInvalid(LoyaltyError):
    code = "wechat_session_invalid"
    http_status = 401
    message = _("The WeChat session is invalid or expired. Log in again.")


class WechatAlreadyBound(Conflict):
    code = "wechat_already_bound"
    message = _("This member is already bound to another WeChat account.")


class WechatOpenidTaken(Conflict):
    code = "wechat_registered_to_other"
    message = _("This WeChat account is already registered to another member.")


class InvalidTier(InvalidInput):
    code = "unknown_tier"
    message = _("No active tier with code “%(tier)s”.")


class ReasonRequired(InvalidInput):
    code = "reason_required"
    message = _("A reason is required.")


class TerminalRevoked(Conflict):
    code = "terminal_revoked"
    message = _("This terminal is revoked; create a new terminal instead.")


class InvalidReferralCode(InvalidInput):
    code = "invalid_referral_code"
    message = _("This referral code is not valid.")


class BirthdayLocked(Conflict):
    code = "birthday_locked"
    message = _("Your birthday is already set; ask customer service to correct it.")
