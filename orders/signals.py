"""Domain events other parts of the app react to, without the sender knowing them."""

from django.dispatch import Signal

# Sent when a parcel comes back to the shop (the carrier's "returned" event, or staff
# marking it received). Receivers get order_id=<int> and source="carrier" or "staff".
parcel_returned = Signal()
