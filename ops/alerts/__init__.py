"""Alerts: tell staff (webhook, email) when a saga needs them, before they open a page.

- conditions.py: reads. What needs staff now (stuck sagas, stuck compensations, sagas the
  sweeper flagged, follow-ups waiting too long, reconciliation discrepancies), each found
  by a cheap query on indexed columns, as plain Condition rows.
- presenters.py: wording. Titles, the Slack-compatible payload, the email.
- notifier.py: the outside world. Posting to the webhook (stdlib urllib, with a timeout)
  and sending the email; each says whether it went out.
- services.py: writes. One check: incidents opened, refreshed or resolved; messages written
  to the outbox (once per incident, again after ALERTS_REPEAT_MINUTES, within
  ALERTS_MAX_PER_HOUR with a summary beyond it); the outbox delivered per channel.
- admin.py: the read-only incident and message lists, with the settings in force.

ops.tasks.alerts_check (Celery beat, every ALERTS_INTERVAL_SECONDS) calls services.alerts_check.
"""
