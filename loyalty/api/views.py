from django.http import HttpRequest, JsonResponse
from django.utils.translation import gettext as _

from loyalty.api.exception_handler import error_body


def api_not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    """Unknown API paths answer in the error envelope, not Django's HTML 404."""
    return JsonResponse(error_body("not_found", _("Not found.")), status=404)
