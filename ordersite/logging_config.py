"""Logging for every process (web, Temporal worker, Celery): structlog in front of stdlib.

One pipeline for our own structlog loggers and for every stdlib logger (Django, Celery,
temporalio, uvicorn), so all lines look alike: JSON lines in production (one object per
line, for a log shipper), readable key=value lines in dev. Each line carries what is
known where it was written: the request id and user (django-structlog's middleware), the
order (bound by the services, orders/log_context.py), the workflow, run, activity and attempt
(orders/saga/log_context.py, and temporalio's own `temporal_workflow`/`temporal_activity`
extras), the Celery task id (django-structlog's Celery receiver) and the trace id (the
current OpenTelemetry span, when tracing is on).

Settings call `configure(...)` once and use the returned dict as LOGGING.
"""

import logging
import os
import re
import sys

import structlog
from django.core.exceptions import ImproperlyConfigured
from opentelemetry import trace

# The saga's workflow id is `order-<pk>-<random>` (orders.services.ordering.order_workflow_id);
# the delivery tracker's starts with it. A line that knows only the workflow still names its order.
_ORDER_IN_WORKFLOW_ID = re.compile(r"^order-(\d+)-")


def _order_from_workflow(event_dict: dict) -> None:
    if "order_id" in event_dict:
        return
    match = _ORDER_IN_WORKFLOW_ID.match(str(event_dict.get("workflow_id") or ""))
    if match:
        event_dict["order_id"] = int(match.group(1))


def add_temporal_extras(logger, method_name: str, event_dict: dict) -> dict:
    """Flatten the dicts temporalio's workflow.logger and activity.logger attach to their
    records (extra `temporal_workflow` / `temporal_activity`) into the line's own keys."""
    record = event_dict.get("_record")
    if record is not None:
        workflow = getattr(record, "temporal_workflow", None)
        if isinstance(workflow, dict):
            event_dict.setdefault("workflow_id", workflow.get("workflow_id"))
            event_dict.setdefault("run_id", workflow.get("run_id"))
            event_dict.setdefault("workflow_type", workflow.get("workflow_type"))
        activity = getattr(record, "temporal_activity", None)
        if isinstance(activity, dict):
            event_dict.setdefault("workflow_id", activity.get("workflow_id"))
            event_dict.setdefault("run_id", activity.get("workflow_run_id"))
            event_dict.setdefault("activity", activity.get("activity_type"))
            event_dict.setdefault("attempt", activity.get("attempt"))
    _order_from_workflow(event_dict)
    return event_dict


def add_trace_ids(logger, method_name: str, event_dict: dict) -> dict:
    """The current OpenTelemetry span's trace and span ids (nothing when tracing is off:
    the no-op span's context is invalid)."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_LOGGED = "_ordersite_logged"


def mark_logged(exc: BaseException) -> None:
    """Say that `exc` has been logged with its traceback and context: LoggedOnce drops the
    library's own report of it (temporalio's "Completing activity as failed")."""
    try:
        setattr(exc, _LOGGED, True)
    except AttributeError:  # an exception type with __slots__: logged twice, no worse
        pass


class LoggedOnce(logging.Filter):
    """A real error is logged once, at error, where its context is known (the activity):
    drop a library's later record of the same exception object."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        seen = 0
        while exc is not None and seen < 5:
            if getattr(exc, _LOGGED, False):
                return False
            exc, seen = exc.__cause__, seen + 1
        return True


def _drop_empty(logger, method_name: str, event_dict: dict) -> dict:
    return {key: value for key, value in event_dict.items() if value is not None}


def _shared_processors() -> list:
    """Run for every line, ours and stdlib's, in the thread that wrote it (so the
    contextvars bound there are the ones merged)."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        # Fields a stdlib call may pass as `extra=` (Django's status_code; our ids).
        structlog.stdlib.ExtraAdder(allow=("status_code", "workflow_id", "order_id")),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_temporal_extras,
        add_trace_ids,
        _drop_empty,
    ]


def configure(*, json_lines: bool, level: str = "INFO", temporalio_level: str = "WARNING") -> dict:
    """Configure structlog and return the LOGGING dict for Django's dictConfig."""
    for name, value in (("LOG_LEVEL", level), ("LOG_LEVEL_TEMPORALIO", temporalio_level)):
        if value not in _LEVELS:
            # dictConfig would fail later with a bare "Unknown level" traceback.
            raise ImproperlyConfigured(f"{name} must be one of {', '.join(_LEVELS)}, not {value!r}")
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    _temporal_info_off_the_message()
    formatter = {"()": structured_formatter, "json_lines": json_lines}
    quiet = {"handlers": ["console"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"structured": formatter},
        "filters": {"logged_once": {"()": LoggedOnce}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "temporalio": {"level": temporalio_level},
            "temporalio.activity": {"filters": ["logged_once"]},
            # django-structlog's middleware says how every request ended, once, with its
            # request id: a 404 or 403 as one warning line, a crash as one error with its
            # traceback. django.request would repeat each, with a traceback for every 403/404.
            "django.request": {"handlers": [], "propagate": False, "level": "CRITICAL"},
            # uvicorn configures its own loggers before Django starts; these take them over so
            # its lines look like ours. Its access lines repeat django-structlog's request_finished.
            "uvicorn": {**quiet, "level": level},
            "uvicorn.error": {**quiet, "level": level},
            "uvicorn.access": {**quiet, "level": "WARNING"},
            # django-structlog's Celery receiver logs each task's end once, with its id and the
            # context that queued it (task_succeeded, task_retrying, task_failed with its
            # traceback); Celery's own trace lines would say each again, a failure's traceback too.
            # Its INTERNAL ERROR (critical) still shows.
            "celery.app.trace": {**quiet, "level": "CRITICAL"},
        },
    }


def structured_formatter(*, json_lines: bool) -> logging.Formatter:
    """The handler's formatter: renders our structlog lines and formats stdlib records
    (Django's, Celery's, temporalio's) through the same processors first."""
    if json_lines:
        renderer = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(default=str)]
    else:
        renderer = [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    return structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        foreign_pre_chain=[*_shared_processors(), structlog.stdlib.PositionalArgumentsFormatter()],
    )


def _temporal_info_off_the_message() -> None:
    """temporalio appends its info dict to each message text ("... ({'workflow_id': ...})");
    add_temporal_extras puts the same in fields, so keep the message itself clean."""
    from temporalio import activity, workflow

    activity.logger.activity_info_on_message = False
    workflow.logger.workflow_info_on_message = False


def json_lines_wanted(*, debug: bool) -> bool:
    """LOG_FORMAT=json|console wins; otherwise JSON when DEBUG is off or DJANGO_ENV=production."""
    chosen = os.environ.get("LOG_FORMAT", "").strip().lower()
    if chosen in {"json", "console"}:
        return chosen == "json"
    if chosen:
        raise ImproperlyConfigured(f"LOG_FORMAT must be 'json' or 'console', not {chosen!r}")
    return not debug or os.environ.get("DJANGO_ENV", "").strip().lower() == "production"


def get_logger(name: str | None = None):
    return structlog.stdlib.get_logger(name)
