"""The sandbox's own records: what an external payment gateway, carrier or mailer would hold.

Reconciliation and the test invariants compare our ledger with these books, as they would
with a real gateway's.
"""

from django.db import models

# Services that can be switched off as a whole ("fail until cleared").
OUTAGE_SERVICES = ("payment", "shipping")


class SandboxGatewayCall(models.Model):
    """Calls made to a sandbox service per idempotency key, for 'fail N times' faults."""

    service = models.CharField(max_length=20)
    idempotency_key = models.CharField(max_length=150)
    calls = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["service", "idempotency_key"], name="sandbox_gatewaycall_unique"),
        ]


class SandboxOutage(models.Model):
    """A switched-on outage of a sandbox service: calls fail until it is cleared."""

    service = models.CharField(max_length=20, unique=True, choices=[(s, s) for s in OUTAGE_SERVICES])
    active = models.BooleanField(default=True)

    def __str__(self) -> str:
        return f"{self.service} outage ({'on' if self.active else 'off'})"


class SandboxPaymentRecord(models.Model):
    """The sandbox gateway's own books; like a real gateway it dedupes by idempotency key."""

    idempotency_key = models.CharField(max_length=150, unique=True)
    kind = models.CharField(max_length=10)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3)
    reference = models.CharField(max_length=100, unique=True)
    # A refund's charge, so the gateway refuses refunds beyond what a charge took.
    charge_reference = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)


class SandboxParcel(models.Model):
    """One label the sandbox carrier printed; booked once per (shipment key, parcel)."""

    shipment_key = models.CharField(max_length=150)
    parcel_number = models.PositiveIntegerField()
    cancelled = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["shipment_key", "parcel_number"], name="sandbox_parcel_once"),
        ]


class SandboxEmail(models.Model):
    """The sandbox mailer's own book: like a mail provider that dedupes by idempotency key,
    it sends a message id once (sandbox.adapters.SandboxNotifier)."""

    message_id = models.CharField(max_length=200, unique=True)
    to = models.CharField(max_length=254)
    subject = models.CharField(max_length=300)
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)


class SandboxCarrierReport(models.Model):
    """An event the sandbox carrier reported over the webhook, once per shipment and event
    (sandbox.carrier_reports), with our webhook's answer."""

    shipment_key = models.CharField(max_length=150)
    event = models.CharField(max_length=20)
    event_id = models.CharField(max_length=100, unique=True)
    status_code = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["shipment_key", "event"], name="sandbox_carrier_report_once"),
        ]
