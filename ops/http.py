"""What the staff views share about requests: where to send the user back, and whether
htmx asked for one part of a page."""

from django.utils.http import url_has_allowed_host_and_scheme


def safe_next(request, fallback: str, *, or_referer: bool = False) -> str:
    """Where to go after a form: its `next` (posted, else in the query string) if it stays
    on this site; with `or_referer`, else the page the form was on (the Referer), if ours;
    else the fallback."""
    candidates = [request.POST.get("next"), request.GET.get("next")]
    if or_referer:
        candidates.append(request.META.get("HTTP_REFERER"))
    for candidate in candidates:
        if candidate and url_has_allowed_host_and_scheme(
            candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            return candidate
    return fallback


def htmx_partial(request, target: str) -> bool:
    """True when htmx asked to re-render only `target` (not for history restores)."""
    htmx = getattr(request, "htmx", None)
    return bool(htmx) and not htmx.history_restore_request and htmx.target == target
