"""The test suite's settings: the app's own, with the sandbox app installed whatever the
environment says (DEBUG=0 included), since the tests drive the sandbox gateway, carrier
and mailer and read their books."""

import os

os.environ["SANDBOX_ENABLED"] = "1"

from ordersite.settings import *  # noqa: E402,F401,F403
