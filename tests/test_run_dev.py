"""`make run`'s setup (scripts/run_dev.py) hands the staff login to create_staff intact."""

import importlib.util
from pathlib import Path

import pytest

from ops.management.commands.create_staff import Command as CreateStaff

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_dev():
    spec = importlib.util.spec_from_file_location("_run_dev", ROOT / "scripts" / "run_dev.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("password", ["-VHMqbP5sSaaeyvH", "plain-Password_1", "--role"])
def test_generated_password_reaches_create_staff_as_is(run_dev, monkeypatch, password):
    # secrets.token_urlsafe can begin with "-": one fresh machine in 64 could not run `make run`.
    steps = []
    monkeypatch.setattr(run_dev, "run_step", lambda out, env, argv: steps.append(argv))
    monkeypatch.setattr(run_dev, "staff_password", lambda: password)
    assert run_dev.prepare_database(out=None, env={}) == password
    argv = next(step for step in steps if "create_staff" in step)
    options = CreateStaff().create_parser("manage.py", "create_staff").parse_args(argv[argv.index("create_staff") + 1:])
    assert options.password == password
    assert options.username == run_dev.STAFF_USER and options.role == "admin"
