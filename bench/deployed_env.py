"""The environment of a deployment, for benchmarks that measure what production runs:
DEBUG off (no query log, no template debug info), workers keeping their database
connections (DB_CONN_MAX_AGE=60, as docker-compose and Procfile.dev run them), over plain
http on loopback, with the sandbox standing in for the gateway, carrier and mailer (no
fault injection)."""

import secrets


def deployed_env() -> dict[str, str]:
    return {
        "DJANGO_ENV": "production",
        "DEBUG": "0",
        "SANDBOX_ENABLED": "1",
        "SANDBOX_FAULTS_ENABLED": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "CARRIER_WEBHOOK_SECRET": secrets.token_urlsafe(32),
        "SECURE_SSL_REDIRECT": "0",
        "SESSION_COOKIE_SECURE": "0",
        "CSRF_COOKIE_SECURE": "0",
        "DB_CONN_MAX_AGE": "60",
    }
