"""OpenTelemetry traces, set up once per process (web, Temporal worker, Celery).

On only when OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set: then spans go by
OTLP/HTTP to that collector (the exporter reads the standard OTEL_* variables itself). Off,
nothing is installed: no middleware, no database hooks, no Temporal interceptor, so tracing
costs nothing.

One trace runs from the create-order request (Django instrumentation) through the database
(psycopg), the Celery tasks it queues (Celery instrumentation), the Temporal client's StartWorkflow, the workflow and each activity
(temporalio.contrib.opentelemetry.TracingInterceptor, carried in Temporal headers) to the
gateway and carrier calls (orders/adapters/spans.py). An operator's signal carries its
request's context too: the workflow's HandleSignal span links to it.
"""

import threading

from django.conf import settings
from opentelemetry import trace

_lock = threading.Lock()
_started = False


def tracing_start(*, service: str, exporter=None) -> bool:
    """Install the tracer provider and the instrumentations, once per process; returns
    whether tracing is on. `exporter` (tests: an in-memory one) replaces OTLP and turns
    tracing on whatever the environment says; its spans are exported as each ends."""
    global _started
    with _lock:
        if _started:
            return True
        if exporter is None and not settings.TRACING_ENABLED:
            return False
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.instrumentation.django import DjangoInstrumentor
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({
            "service.name": settings.OTEL_SERVICE_NAME, "service.namespace": "ordersite",
            "process.kind": service,
        }))
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        # Django's middleware must be in place before the first request builds the handler:
        # the entry points call this before get_asgi_application / the first request.
        DjangoInstrumentor().instrument(tracer_provider=provider)
        PsycopgInstrumentor().instrument(tracer_provider=provider, enable_commenter=False)
        # A task queued by a request continues its trace (the context rides in the message
        # headers), and a task's queries have a span to belong to, not one trace each.
        CeleryInstrumentor().instrument(tracer_provider=provider)
        _started = True
        return True


def tracing_stop() -> None:
    """Take the instrumentations out again (tests: the rest of a test run goes untraced;
    the tracer provider, global once set, stays)."""
    global _started
    with _lock:
        if not _started:
            return
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.instrumentation.django import DjangoInstrumentor
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

        DjangoInstrumentor().uninstrument()
        PsycopgInstrumentor().uninstrument()
        CeleryInstrumentor().uninstrument()
        _started = False


def tracing_on() -> bool:
    return _started


def temporal_interceptors() -> list:
    """For Client.connect: the interceptor that carries the trace into Temporal headers and
    starts spans for workflows and activities (a worker built from this client gets it too)."""
    if not _started:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor()]


def worker_interceptors(client) -> list:
    """For a Worker whose client was connected without the tracing interceptor (tests make
    their own clients): add it to the worker, never twice."""
    if not _started:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    if any(isinstance(i, TracingInterceptor) for i in client.config().get("interceptors", ())):
        return []
    return [TracingInterceptor()]


def span(name: str, **attributes):
    """A span around a block (a no-op span when tracing is off)."""
    return trace.get_tracer("ordersite").start_as_current_span(name, attributes=attributes)
