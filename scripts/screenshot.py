#!/usr/bin/env python3
"""Refresh docs/screenshots/: order-detail-compensation.png (the README's picture) and the
charts' dashboard-charts.png and order-waterfall.png.

They are taken by the browser tests that run real sagas (an inventory failure and its
compensation, tests/browser/test_order_live.py; a saga stuck then retried,
tests/browser/test_charts_browser.py), at 1280x900, full page; the tests save them when
SCREENSHOT_DIR is set. Needs what the browser tests need: Chromium at
/usr/bin/chromium (or CHROMIUM_PATH), Redis, and the temporal CLI from the venv.

    .venv/bin/python scripts/screenshot.py
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
TESTS = [
    "tests/browser/test_order_live.py::test_inventory_failure_is_undone_in_reverse_order",
    "tests/browser/test_charts_browser.py",
]
PICTURES = ["order-detail-compensation.png", "dashboard-charts.png", "order-waterfall.png"]


def main() -> int:
    target = ROOT / "docs" / "screenshots"
    env = {**os.environ, "SCREENSHOT_DIR": str(target)}
    python = str(PYTHON) if PYTHON.exists() else sys.executable
    result = subprocess.run([python, "-m", "pytest", *TESTS, "-q", "-p", "no:cacheprovider"], cwd=ROOT, env=env)
    if result.returncode == 0:
        for picture in PICTURES:
            print(f"wrote {target / picture}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
