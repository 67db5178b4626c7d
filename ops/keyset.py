"""Keyset ("seek") pagination for the staff lists: the order list and the queues.

OFFSET pagination makes the database walk past every earlier row, so page 2,000 of the
order list cost forty times page 1. Here a page is asked for by the sort key of the row it
starts after (`?after=<cursor>`) or ends before (`?before=<cursor>`), and the last page is
the first page of the reversed order (`?last=1`): every page costs what the first does.

Why not django-cursor-pagination: it compares cursor values as text and expands the key
into ORs with IS NULL branches, which Postgres cannot turn into an index range, so a deep
page still scans the rows before it. Here the first key also bounds the scan
(`created_at <= v AND (created_at < v OR id < pk)`), which is an index condition.

Ordering keys must end with a unique column ("id" or "-id") and not be nullable.
Cursors are opaque to users (base64 of JSON); a cursor that does not decode, or does not
fit the ordering, is ignored and the first page is shown: a bookmark never errors.
"""

import base64
import binascii
import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation

from django.db.models import Model, Q, QuerySet
from django.utils.dateparse import parse_datetime

PAGE_SIZE = 50
# Above this many matches a list says "more than N" instead of counting on.
COUNT_CAP = 1000


@dataclass(frozen=True)
class PageRequest:
    after: str = ""
    before: str = ""
    last: bool = False
    # What the links said the page number was: only a label ("Page 3"), never a position;
    # 0 when not known (pages reached back from the Last page).
    number: int = 0

    @classmethod
    def from_query(cls, query) -> "PageRequest":
        try:
            number = min(max(int(query.get("page") or 0), 0), 1_000_000)
        except (TypeError, ValueError):
            number = 0
        return cls(
            after=(query.get("after") or "")[:500],
            before=(query.get("before") or "")[:500],
            last=query.get("last") == "1",
            number=number,
        )


class _Count:
    """`page.paginator.count` as in Django's Page: counted on first use, capped at COUNT_CAP
    (None past it)."""

    def __init__(self, queryset: QuerySet, cap: int | None, known: int | None = None):
        self._queryset = queryset
        self.cap = cap
        self._count: int | None | bool = False if known is None else known

    @property
    def count(self) -> int | None:
        if self._count is False:
            qs = self._queryset.order_by()
            if self.cap is None:
                self._count = qs.count()
            else:
                matched = qs[: self.cap + 1].count()
                self._count = matched if matched <= self.cap else None
        return self._count


@dataclass
class KeysetPage:
    object_list: list
    has_next: bool
    has_previous: bool
    next_cursor: str
    previous_cursor: str
    number: int
    per_page: int
    is_last: bool
    # "Page 3"; "Last page" or "Earlier page" where the number is not known.
    label: str
    paginator: _Count = field(repr=False)

    def __iter__(self):
        return iter(self.object_list)

    def __len__(self) -> int:
        return len(self.object_list)

    @property
    def count(self) -> int | None:
        return self.paginator.count

    # Positions of the first and last row shown ("Showing 51-100"), when the number is known.
    @property
    def first_index(self) -> int | None:
        return (self.number - 1) * self.per_page + 1 if self.number and self.object_list else None

    @property
    def last_index(self) -> int | None:
        first = self.first_index
        return first + len(self.object_list) - 1 if first else None

    # The number hints the Previous and Next links carry (None: unknown, left out of the URL).
    @property
    def previous_number(self) -> int | None:
        return self.number - 1 if self.number > 1 else None

    @property
    def next_number(self) -> int | None:
        return self.number + 1 if self.number else None

    @property
    def count_cap(self) -> int | None:
        return self.paginator.cap


def _column(key: str) -> str:
    return key.lstrip("-")


def _value_of(obj: Model, key: str):
    value = getattr(obj, _column(key))
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def encode_cursor(obj: Model, ordering: tuple[str, ...]) -> str:
    raw = json.dumps([_value_of(obj, key) for key in ordering], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode(cursor: str, queryset: QuerySet, ordering: tuple[str, ...]) -> list | None:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(values, list) or len(values) != len(ordering):
        return None
    model = queryset.model
    decoded = []
    for key, value in zip(ordering, values):
        model_field = model._meta.get_field(_column(key))
        internal = model_field.get_internal_type()
        try:
            if internal == "DateTimeField":
                value = parse_datetime(value) if isinstance(value, str) else None
            elif internal == "DecimalField":
                value = Decimal(value) if isinstance(value, str) else None
            elif internal in {"AutoField", "BigAutoField", "IntegerField", "PositiveIntegerField", "BigIntegerField"}:
                value = value if isinstance(value, int) and not isinstance(value, bool) else None
            elif not isinstance(value, str):
                value = None
        except (InvalidOperation, ValueError):
            value = None
        if value is None:
            return None
        decoded.append(value)
    return decoded


def _seek(ordering: tuple[str, ...], values: list, *, backwards: bool) -> Q:
    """Rows strictly after `values` in `ordering` (before them when `backwards`)."""
    def beyond(key: str, strict: bool) -> str:
        descending = key.startswith("-") != backwards
        return f"{_column(key)}__{'lt' if descending else 'gt'}{'' if strict else 'e'}"

    condition = Q()
    for i in range(len(ordering)):
        equal = {_column(ordering[j]): values[j] for j in range(i)}
        condition |= Q(**equal, **{beyond(ordering[i], True): values[i]})
    # The redundant bound on the first key lets the database start the index scan there.
    return Q(**{beyond(ordering[0], False): values[0]}) & condition


def _reverse(ordering: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(key[1:] if key.startswith("-") else f"-{key}" for key in ordering)


def keyset_page(
    queryset: QuerySet,
    request: PageRequest,
    *,
    ordering: tuple[str, ...] | None = None,
    per_page: int = PAGE_SIZE,
    count_cap: int | None = COUNT_CAP,
) -> KeysetPage:
    """One page of `queryset` in `ordering`: one query for the rows (one more row than the page
    tells whether there is another), and a count only if the template asks for it.
    Without `ordering`, the queryset's own order_by is the key."""
    ordering = tuple(ordering or queryset.query.order_by)
    if not ordering or not all(isinstance(key, str) for key in ordering):
        raise ValueError("a keyset page needs an ordering by column names")
    if _column(ordering[-1]) != "id":
        raise ValueError("a keyset ordering must end with the primary key")
    qs = queryset.order_by(*ordering)
    after = _decode(request.after, queryset, ordering) if request.after else None
    before = _decode(request.before, queryset, ordering) if request.before else None
    number = request.number
    if before is not None:
        rows = list(qs.filter(_seek(ordering, before, backwards=True)).order_by(*_reverse(ordering))[: per_page + 1])
        has_previous, has_next = len(rows) > per_page, True
        rows = rows[:per_page][::-1]
        if not has_previous:
            number = 1
    elif request.last and after is None:
        rows = list(qs.order_by(*_reverse(ordering))[: per_page + 1])
        has_previous, has_next = len(rows) > per_page, False
        rows = rows[:per_page][::-1]
        number = 0 if has_previous else 1
    else:
        if after is not None:
            qs = qs.filter(_seek(ordering, after, backwards=False))
        else:
            number = 1
        rows = list(qs[: per_page + 1])
        has_next, has_previous = len(rows) > per_page, after is not None
        rows = rows[:per_page]
    return KeysetPage(
        object_list=rows,
        has_next=has_next,
        has_previous=has_previous,
        next_cursor=encode_cursor(rows[-1], ordering) if rows and has_next else "",
        previous_cursor=encode_cursor(rows[0], ordering) if rows and has_previous else "",
        number=number,
        per_page=per_page,
        is_last=not has_next,
        label=f"Page {number}" if number else ("Last page" if not has_next else "Earlier page"),
        # Everything fits on one page: its rows are the count, no query needed.
        paginator=_Count(queryset, count_cap, known=len(rows) if not (has_next or has_previous) else None),
    )
