#!/bin/sh
# Register the saga's custom search attributes on a running Temporal server. Idempotent:
# attributes that already exist are left alone, so it can run on every `up`.
#
# Usage: register_search_attributes.sh [path/to/search_attributes.py]
# Env:   TEMPORAL_ADDRESS (default localhost:7233), TEMPORAL_NAMESPACE (default "default"),
#        WAIT_SECONDS (how long to wait for the server to be ready, default 180).
#
# Plain POSIX sh with grep/tr only: it runs inside the temporalio/admin-tools image,
# which has the `temporal` CLI but not Python, so the list is read from the Python
# module as text rather than imported (ordersite/search_attributes.py is the one list).
set -eu

FILE="${1:-$(dirname "$0")/../ordersite/search_attributes.py}"
ADDRESS="${TEMPORAL_ADDRESS:-localhost:7233}"
NAMESPACE="${TEMPORAL_NAMESPACE:-default}"
WAIT_SECONDS="${WAIT_SECONDS:-180}"

# One "Name Type" line per `"Name": "Type"` pair, whatever the dict's layout; only
# Temporal's type names match, so nothing else in the file (the docstring) is picked up.
PAIRS=$(grep -oE '"[A-Za-z_][A-Za-z0-9_]*"[[:space:]]*:[[:space:]]*"(Text|Keyword|Int|Double|Bool|Datetime|KeywordList)"' "$FILE" \
    | tr -d '" \t' | tr ':' ' ')
if [ -z "$PAIRS" ]; then
    echo "no search attributes found in $FILE" >&2
    exit 1
fi

# Wait for the namespace, not just the port: auto-setup opens the port before it has
# created the schema and the default namespace, and attributes belong to a namespace.
echo "waiting for namespace '$NAMESPACE' on $ADDRESS ..."
waited=0
until temporal operator namespace describe --address "$ADDRESS" --namespace "$NAMESPACE" >/dev/null 2>&1; do
    if [ "$waited" -ge "$WAIT_SECONDS" ]; then
        echo "Temporal at $ADDRESS not ready after ${WAIT_SECONDS}s" >&2
        exit 1
    fi
    sleep 2
    waited=$((waited + 2))
done

existing=$(temporal operator search-attribute list --address "$ADDRESS" --namespace "$NAMESPACE")
echo "$PAIRS" | while read -r name type; do
    if printf '%s\n' "$existing" | grep -qw -- "$name"; then
        echo "search attribute $name: already registered"
    else
        temporal operator search-attribute create --address "$ADDRESS" --namespace "$NAMESPACE" \
            --name "$name" --type "$type"
        echo "search attribute $name: registered as $type"
    fi
done
