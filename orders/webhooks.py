"""Webhooks the outside world calls. Public (no login, no CSRF): each proves who sent it
with a signature instead, checked by its service before anything is read or written."""

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .services.carrier_events import SIGNATURE_HEADER, CarrierWebhookRejected, carrier_webhook_receive


# Public: the carrier's servers call it, with no session. csrf_exempt because CSRF protects
# cookie-authenticated browsers, and this URL takes no cookies: the HMAC signature over the
# raw body (and its timestamp) is what authenticates it. Nothing else in the app is exempt.
@csrf_exempt
@require_POST
def carrier_webhook_view(request):
    """401 bad or missing signature, 400 malformed body, 404 unknown parcel, 200 stored (or a duplicate)."""
    try:
        result = carrier_webhook_receive(body=request.body, signature=request.headers.get(SIGNATURE_HEADER, ""))
    except CarrierWebhookRejected as rejected:
        return JsonResponse({"error": str(rejected)}, status=rejected.status)
    return JsonResponse({"event_id": result.event.event_id, "duplicate": result.duplicate})
