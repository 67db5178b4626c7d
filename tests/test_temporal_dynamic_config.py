"""The Temporal server settings the app's latency depends on reach every server it runs on:
the tests' dev server, `make run`'s and docker-compose's (ordersite/temporal_dynamic_config.py)."""

import re
from pathlib import Path

from ordersite.temporal_dynamic_config import DYNAMIC_CONFIG, start_dev_flags

from .temporal_server import DevServer

ROOT = Path(__file__).resolve().parent.parent


def _compose_entries() -> dict[str, int]:
    # The file's whole grammar here: `key:` then `  - value: N` (no constraints).
    text = (ROOT / "deploy" / "temporal" / "dynamicconfig.yaml").read_text()
    return {key: int(value) for key, value in re.findall(r"^([\w.]+):\s*\n\s+- value: (\d+)\s*$", text, re.M)}


def test_compose_server_gets_the_same_settings():
    assert _compose_entries() == DYNAMIC_CONFIG
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "./deploy/temporal/dynamicconfig.yaml:/etc/temporal/config/dynamicconfig/ordersite.yaml" in compose
    assert "DYNAMIC_CONFIG_FILE_PATH: config/dynamicconfig/ordersite.yaml" in compose


def test_dev_servers_get_the_settings_as_options():
    flags = start_dev_flags()
    assert flags[0::2] == ["--dynamic-config-value"] * len(DYNAMIC_CONFIG)
    assert dict(flag.split("=", 1) for flag in flags[1::2]) == {k: str(v) for k, v in DYNAMIC_CONFIG.items()}
    temporal_line = next(line for line in (ROOT / "Procfile.dev").read_text().splitlines()
                         if line.startswith("temporal:"))
    assert "$TEMPORAL_DYNAMIC_CONFIG_ARGS" in temporal_line
    command = DevServer().command()  # the tests' and the benchmarks' server
    assert all(flag in command for flag in flags[1::2])
