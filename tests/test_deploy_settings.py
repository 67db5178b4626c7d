"""A deployment's settings: `manage.py check --deploy` is clean with the production
environment, and the app refuses to start on what would make it unsafe."""

from .test_sandbox_app import REAL_ADAPTERS, _manage

PRODUCTION = {"DEBUG": "0", "SANDBOX_ENABLED": "0", "ALLOWED_HOSTS": "shop.example", **REAL_ADAPTERS}


def test_check_deploy_is_clean_with_the_production_environment(tmp_path):
    result = _manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_debug_off_without_a_secret_key_refuses_to_start(tmp_path):
    for key in ("", "short", "insecure-set-SECRET_KEY-to-a-long-random-value-and-some-more-chars"):
        result = _manage(tmp_path, "check", SECRET_KEY=key, **PRODUCTION)
        assert result.returncode != 0
        assert "SECRET_KEY must be set to a long random value" in result.stderr
        assert "Traceback" not in result.stderr.split("ImproperlyConfigured")[-1]


def test_debug_off_with_sandbox_faults_refuses_to_start(tmp_path):
    result = _manage(tmp_path, "check", **{**PRODUCTION, "SANDBOX_ENABLED": "1", "SANDBOX_FAULTS_ENABLED": "1"})
    assert result.returncode != 0
    assert "fault injection is for dev and tests" in result.stderr


def test_debug_off_without_a_carrier_webhook_secret_refuses_to_start(tmp_path):
    for secret in ("", "too-short"):
        result = _manage(tmp_path, "check", CARRIER_WEBHOOK_SECRET=secret, **PRODUCTION)
        assert result.returncode != 0
        assert "CARRIER_WEBHOOK_SECRET must be set" in result.stderr
        assert "Traceback" not in result.stderr.split("ImproperlyConfigured")[-1]
