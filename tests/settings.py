"""The test suite's settings: the app's own, with the sandbox app installed whatever the
environment says (DEBUG=0 included), since the tests drive the sandbox gateway, carrier
and mailer and read their books."""

import os

os.environ["SANDBOX_ENABLED"] = "1"
# Forced, not a default: a shell left with DJANGO_ENV=production must not turn the suite into a
# deployment. Child processes (workers started by tests) inherit it.
os.environ["DJANGO_ENV"] = "test"

from ordersite.settings import *  # noqa: E402,F401,F403
