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


def test_production_is_the_default_and_refuses_debug(tmp_path):
    # Nothing said about the environment: production, so DEBUG is off and a key is required.
    env = {k: v for k, v in PRODUCTION.items() if k != "DEBUG"}
    result = _manage(tmp_path, "check", SECRET_KEY="", **env)
    assert result.returncode != 0
    assert "DEBUG is off (DJANGO_ENV=production), so SECRET_KEY must be set" in result.stderr

    result = _manage(tmp_path, "check", **{**PRODUCTION, "DEBUG": "1"})
    assert result.returncode != 0
    assert "DEBUG is on with DJANGO_ENV=production" in result.stderr


def test_an_unknown_environment_is_refused_with_the_choices(tmp_path):
    result = _manage(tmp_path, "check", DJANGO_ENV="prod", **PRODUCTION)
    assert result.returncode != 0
    assert "DJANGO_ENV='prod': choose one of production, development, test" in result.stderr


def test_development_runs_with_debug_and_the_sandbox_without_a_key(tmp_path):
    result = _manage(tmp_path, "shell", "-c", "from django.conf import settings as s; "
                     "print(s.DEBUG, s.SANDBOX_ENABLED, s.SANDBOX_FAULTS_ENABLED)",
                     DJANGO_ENV="development", SECRET_KEY="")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split() == ["True", "True", "True"]
