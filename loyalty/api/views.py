from django.http import HttpRequest, JsonResponse
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt

from loyalty.api.exception_handler import error_body


# CSRF-exempt: it changes nothing, and API clients (no session, no CSRF
# token) posting to a misspelt path must get the 404 envelope, not an HTML 403.
@csrf_exempt
def api_not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    """Unknown API paths answer in the error envelope, not Django's HTML 404."""
    return JsonResponse(error_body("not_found", _("Not found.")), status=404)
