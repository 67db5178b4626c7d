"""What structured logs and traces cost the saga: p50/p95 of sequential happy-path sagas
with them off and on, one run each, each in a process of its own.

    .venv/bin/python bench/observability_cost.py [--sequential 40] [--rounds 1]
        [--database-url postgres://postgres@127.0.0.1:5432/bench_obs] [--strict]

- off: LOG_LEVEL=WARNING (no line per request, event or step) and no OTLP endpoint, so no
  tracer, middleware, database hook or Temporal interceptor is installed;
- logs: the same JSON lines as on, tracing off;
- on: LOG_LEVEL=INFO with JSON lines (what production writes: one line per saga event,
  the service lines) to a file, and traces exported by OTLP/HTTP (batch span processor, as
  in production) to a local sink that answers 200 to every export: every span of the saga
  (the client's StartWorkflow, the workflow's, each activity's, the database's and the
  gateway's and carrier's) is made, serialised and sent.

Each mode runs its own Temporal dev server and worker in one process, as
bench/saga_latency.py does (orders placed through order_create, which starts the saga after
commit, timed until the workflow's result). The database (SQLite under var/bench/ by
default; a URL given is flushed first, so never one the tests use) is migrated per mode.
The aim (issue 9): instrumentation costs the saga under 5% at p50.
"""

import argparse
import asyncio
import http.server
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

AIM_P50_OVERHEAD = 0.05
MODES = ("off", "logs", "on")
LABELS = {"off": "logs at WARNING, tracing off", "logs": "JSON logs at INFO, tracing off",
          "on": "JSON logs at INFO, traces by OTLP"}


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


# --- the child: one mode, one process ---------------------------------------------------------


def child_configure(mode: str, database_url: str | None) -> None:
    bench_dir = ROOT / "var" / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    else:
        db = bench_dir / f"observability_{mode}.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        os.environ["DATABASE_URL"] = f"sqlite:///{db}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordersite.settings")
    os.environ.setdefault("DJANGO_ENV", "development")  # DEBUG and the sandbox, as `make run` has them
    os.environ["EMAIL_BACKEND"] = "django.core.mail.backends.locmem.EmailBackend"
    os.environ["LOG_LEVEL"] = "WARNING" if mode == "off" else "INFO"
    os.environ["LOG_FORMAT"] = "json"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    if database_url:
        call_command("flush", interactive=False, verbosity=0)
    if mode == "on":
        from ordersite import tracing

        assert tracing.tracing_start(service="bench"), "OTEL_EXPORTER_OTLP_ENDPOINT is not set"


async def child_measure(sequential: int) -> list[float]:
    from asgiref.sync import sync_to_async
    from django.conf import settings
    from temporalio.client import Client

    from orders.saga.worker import build_workers
    from ordersite import tracing
    from tests.factories import make_order, make_product
    from tests.temporal_server import DevServer

    server = DevServer().start()
    try:
        settings.TEMPORAL_ADDRESS = server.address
        suffix = uuid.uuid4().hex[:6]
        settings.SAGA_TASK_QUEUE, settings.PAYMENTS_TASK_QUEUE = f"orders-{suffix}", f"payments-{suffix}"
        # As run_worker connects: with the tracing interceptor when tracing is on.
        client = await Client.connect(server.address, interceptors=tracing.temporal_interceptors())
        workers = build_workers(client, executor=ThreadPoolExecutor(max_workers=64), sandboxed=True)
        runs = [asyncio.create_task(w.run()) for w in workers]
        product = await sync_to_async(make_product)(price="9.50", stock=10_000_000)
        create = sync_to_async(lambda: make_order(products=[(product, 1)]), thread_sensitive=False)

        async def one_saga() -> float:
            started = time.perf_counter()
            order = await create()
            result = await client.get_workflow_handle(order.workflow_id).result()
            assert result == "completed", result
            return time.perf_counter() - started

        try:
            for _ in range(3):  # warm up connections and caches
                await one_saga()
            return [await one_saga() for _ in range(sequential)]
        finally:
            await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
            await asyncio.gather(*runs, return_exceptions=True)
    finally:
        server.stop()


def child_main(args) -> None:
    child_configure(args.child, args.database_url)
    latencies = asyncio.run(child_measure(args.sequential))
    if args.child == "on":
        from opentelemetry import trace

        trace.get_tracer_provider().force_flush()  # the last batch, before the process goes
    print("RESULT " + json.dumps(latencies), flush=True)
    os._exit(0)  # the span exporter's thread and the bridge loop need no orderly goodbye


# --- the parent: an OTLP sink, the modes, the figures ----------------------------------------


class _Sink(http.server.BaseHTTPRequestHandler):
    exports = 0
    spans = 0

    def do_POST(self):  # noqa: N802 (http.server's naming)
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        type(self).exports += 1
        type(self).spans += sum(len(scope.spans) for resource in request.resource_spans
                                for scope in resource.scope_spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def run_mode(mode: str, args, endpoint: str) -> list[float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if mode == "on":
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    command = [sys.executable, __file__, "--child", mode, "--sequential", str(args.sequential)]
    if args.database_url:
        command += ["--database-url", args.database_url]
    log_file = ROOT / "var" / "bench" / f"observability_{mode}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as logs:
        done = subprocess.run(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=logs, text=True, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"mode {mode} failed (exit {done.returncode}); its log: {log_file}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main(args) -> None:
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}"
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_number in range(args.rounds):
        # Every other round in reverse, so that what runs first (a cold disk, a busy machine)
        # does not always weigh on the same mode.
        for mode in MODES if round_number % 2 == 0 else reversed(MODES):
            latencies[mode] += run_mode(mode, args, endpoint)
    sink.shutdown()
    log_lines = sum(1 for _ in open(ROOT / "var" / "bench" / "observability_on.log"))
    print(f"sequential sagas per mode: {len(latencies['off'])}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'':44}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}")
    for mode, label in LABELS.items():
        lat = latencies[mode]
        print(f"{label:44}{percentile(lat, 50) * 1000:9.1f}{percentile(lat, 95) * 1000:9.1f}"
              f"{statistics.mean(lat) * 1000:9.1f}")
    logs_only = percentile(latencies["logs"], 50) / percentile(latencies["off"], 50) - 1
    print(f"logs alone at p50: {logs_only * 100:+.1f}%")
    overhead = percentile(latencies["on"], 50) / percentile(latencies["off"], 50) - 1
    print(f"on: {log_lines} log lines written; {_Sink.spans} spans in {_Sink.exports} OTLP exports received")
    print(f"instrumentation cost at p50: {overhead * 100:+.1f}% (aim under {AIM_P50_OVERHEAD * 100:.0f}%)")
    if args.strict and overhead >= AIM_P50_OVERHEAD:
        raise SystemExit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequential", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=1, help="run the modes this many times (every other round in reverse order)")
    parser.add_argument("--database-url")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the cost is 5%% or more at p50")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        child_main(arguments)
    else:
        main(arguments)
