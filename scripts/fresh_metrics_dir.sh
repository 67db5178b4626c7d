#!/bin/sh
# fresh_metrics_dir.sh CMD [ARGS...]: empty PROMETHEUS_MULTIPROC_DIR (if set), then become CMD.
#
# prometheus_client's multiprocess mode keeps each process's samples in files there; a
# restarted process kind must not add up its previous life's files (orders/metrics.py). It
# has to happen before any process of the kind starts, so here, not in Python: uvicorn's
# and Celery's worker processes import the app themselves.
set -eu
if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    rm -rf "$PROMETHEUS_MULTIPROC_DIR"
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
fi
exec "$@"
