"""Where the charts' marks go: pure functions from numbers to SVG coordinates, no Django.

Coordinates are in the SVG's own user units (its viewBox); CSS scales the drawing to the
page. y grows downwards, as in SVG: a column of height h standing on a baseline at y=B has
its top at B - h.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Steps a value axis may take, times a power of ten: ticks land on round numbers.
NICE_STEPS = (1, 2, 2.5, 5, 10)
# Steps a time axis may take, in seconds: round durations from 10 ms to a week.
TIME_STEPS = (
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800,
    3600, 7200, 4 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400,
)


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Tick:
    value: float
    position: float  # x on a horizontal axis, y on a vertical one


def nice_step(raw: float) -> float:
    """The smallest round step (1, 2, 2.5 or 5 times a power of ten) at least `raw`."""
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for step in NICE_STEPS:
        if step * magnitude >= raw * (1 - 1e-9):
            return step * magnitude
    return 10 * magnitude  # pragma: no cover - the loop ends at 10


def value_axis(maximum: float, *, ticks: int = 4, integer: bool = False) -> tuple[float, float]:
    """(top of the axis, tick step) for values up to `maximum`: `ticks` round steps that cover it.
    Counts (`integer`) never get a fractional step. An all-zero chart gets an axis of 0..ticks."""
    step = nice_step(maximum / ticks) if maximum > 0 else 1.0
    if integer:
        step = max(1.0, math.ceil(step))
    top = step * math.ceil(maximum / step) if maximum > 0 else step * ticks
    return top, step


def vertical_ticks(top: float, step: float, *, baseline: float, height: float) -> list[Tick]:
    """Ticks from 0 to `top`, each at the y where a value sits on an axis `height` tall."""
    count = round(top / step)
    return [Tick(value=i * step, position=baseline - height * (i * step) / top) for i in range(count + 1)]


@dataclass(frozen=True)
class Column:
    """One column of a stacked column chart: its slot and a rectangle per series (bottom up)."""

    index: int
    x: float
    width: float
    total: float
    segments: tuple[Rect, ...]


def stacked_columns(values: Sequence[Sequence[float]], *, top: float, x0: float, width: float, baseline: float,
                    height: float, gap: float = 2.0) -> list[Column]:
    """Columns side by side across `width` from `x0`, one per entry of `values`; each entry's
    numbers stack from the baseline up, scaled so that `top` reaches `height`.

    A segment of zero has zero height (kept, so segment i is always series i)."""
    if not values:
        return []
    slot = width / len(values)
    column_width = max(slot - gap, 1.0)
    columns = []
    for index, stack in enumerate(values):
        x = x0 + index * slot + (slot - column_width) / 2
        y = baseline
        segments = []
        for value in stack:
            h = height * max(value, 0) / top if top > 0 else 0.0
            y -= h
            segments.append(Rect(x=x, y=y, width=column_width, height=h))
        columns.append(Column(index=index, x=x, width=column_width, total=sum(stack), segments=tuple(segments)))
    return columns


def bar_width(value: float, *, top: float, width: float, minimum: float = 0.0) -> float:
    """The length of a horizontal bar for `value` on an axis where `top` spans `width`;
    a value above zero gets at least `minimum`, so a small one stays visible."""
    if top <= 0 or value <= 0:
        return 0.0
    return max(width * min(value, top) / top, minimum)


# --- time axis (the waterfall) ---------------------------------------------------------------


def time_step(total_seconds: float, *, ticks: int = 6) -> float:
    """A round duration to label a time axis of `total_seconds` with about `ticks` ticks."""
    raw = total_seconds / ticks if total_seconds > 0 else 0
    return next((step for step in TIME_STEPS if step >= raw), TIME_STEPS[-1] * math.ceil(raw / TIME_STEPS[-1]))


def time_ticks(total_seconds: float, *, x0: float, width: float, ticks: int = 6) -> list[Tick]:
    """Ticks every round step from 0 to the end of an axis `total_seconds` long across `width`."""
    if total_seconds <= 0:
        return [Tick(value=0.0, position=x0)]
    step = time_step(total_seconds, ticks=ticks)
    count = int(total_seconds / step + 1e-9)
    return [Tick(value=i * step, position=x0 + width * i * step / total_seconds) for i in range(count + 1)]


def time_span(start_seconds: float, end_seconds: float, *, total_seconds: float, x0: float, width: float,
              minimum: float = 2.0) -> tuple[float, float]:
    """(x, width) of a span from `start_seconds` to `end_seconds` after the axis' origin.

    An instant or a span shorter than a pixel still shows, `minimum` wide, and never runs
    past the axis' end."""
    if total_seconds <= 0:
        return x0, minimum
    scale = width / total_seconds
    x = x0 + max(start_seconds, 0) * scale
    w = max((end_seconds - start_seconds) * scale, minimum)
    x = min(x, x0 + width - minimum)
    return x, min(w, x0 + width - x)
