"""The Prometheus alert rules (deploy/prometheus/alerts.yml) against their promtool unit
tests (alerts_test.yml), and the Prometheus config that loads them. promtool comes with
Debian's `prometheus` package, which CI installs (.ci/run)."""

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not on PATH (apt-get install prometheus)")


def promtool(*args: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_alert_rules_pass_their_unit_tests():
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_rules_and_config_are_valid():
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "7 rules found" in rules.stdout
    config = promtool("check", "config", "--syntax-only", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_the_unit_tests_catch_a_wrong_threshold(tmp_path):
    """The tests can fail: with the follow-up threshold doubled, the alert they expect is missing."""
    (tmp_path / "alerts.yml").write_text((DEPLOY / "alerts.yml").read_text().replace("> 3600", "> 7200"))
    (tmp_path / "alerts_test.yml").write_text((DEPLOY / "alerts_test.yml").read_text())
    done = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert done.returncode != 0 and "FollowUpOverdue" in done.stdout + done.stderr


def test_grafana_dashboard_queries_parse(tmp_path):
    """Every query of the provisioned dashboard is valid PromQL (checked as recording rules)."""
    import json

    dashboard = json.loads((DEPLOY.parent / "grafana" / "dashboards" / "order-sagas.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) > 20 and any("temporal_" in e for e in exprs) and any("ordersite_saga" in e for e in exprs)
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    (tmp_path / "dashboard_rules.yml").write_text(json.dumps(rules))  # JSON is YAML
    done = promtool("check", "rules", "dashboard_rules.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
