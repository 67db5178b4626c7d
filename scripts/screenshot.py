#!/usr/bin/env python3
"""Refresh docs/screenshots/order-detail-compensation.png, the README's picture.

It is taken by the browser test that runs a real saga through an inventory failure and
its compensation (tests/browser/test_order_live.py), at 1280x900, full page; the test
saves it when SCREENSHOT_DIR is set. Needs what the browser tests need: Chromium at
/usr/bin/chromium (or CHROMIUM_PATH), Redis, and the temporal CLI from the venv.

    .venv/bin/python scripts/screenshot.py
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
TEST = "tests/browser/test_order_live.py::test_inventory_failure_is_undone_in_reverse_order"


def main() -> int:
    target = ROOT / "docs" / "screenshots"
    env = {**os.environ, "SCREENSHOT_DIR": str(target)}
    python = str(PYTHON) if PYTHON.exists() else sys.executable
    result = subprocess.run([python, "-m", "pytest", TEST, "-q", "-p", "no:cacheprovider"], cwd=ROOT, env=env)
    if result.returncode == 0:
        print(f"wrote {target / 'order-detail-compensation.png'}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
