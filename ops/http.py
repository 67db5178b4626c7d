"""What the staff views share about requests: where to send the user back, and whether
htmx asked for one part of a page."""

from django.urls import reverse
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


class ReversedOnce:
    """A URL reversed once per page, then filled in for each row.

    A queue of 50 rows links and posts from each row: 150 to 350 reverse() calls were a
    fifth of the stuck and follow-up queues' renders (10-14 ms). The URL's shape still comes
    from the urlconf, reversed with marker values (an int for <int:...>, a word for
    <str:...>), so a change of route shows here too. Only for values that need no quoting.
    """

    INT = 987654321
    WORD = "__arg__"

    def __init__(self, viewname: str, *markers: int | str) -> None:
        self._markers = [str(marker) for marker in markers]
        self._url = reverse(viewname, args=markers)

    def __call__(self, *args: int | str) -> str:
        url = self._url
        for marker, value in zip(self._markers, args, strict=True):
            url = url.replace(marker, str(value), 1)
        return url
