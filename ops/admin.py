"""Django admin for products, orders, follow-ups and the audit log of operator actions (alerts:
ops/alerts/admin.py).

The admin is a staff surface, so it lives in ops (the sandbox's outage switch stays with
the sandbox: sandbox.admin). It never edits what the saga owns. Orders, their ledgers,
follow-ups and the audit log are read-only here (an audit log that can be edited proves
nothing); stock changes only through the restock action (orders.services.catalog), so the
conservation constraint cannot be broken from a form; and retry / compensate / resend go
through ops.services, with its permission checks and audit rows.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import PermissionDenied
from django.template.loader import render_to_string
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django.utils.translation import gettext

from orders.models import (
    CarrierEvent,
    FollowUp,
    OperatorAction,
    Order,
    OrderLine,
    Payment,
    Product,
    Reservation,
    Return,
    ReturnLine,
    SagaEvent,
    Shipment,
)
from orders.services.catalog import product_deactivate, product_restock

from . import services as ops_services
from .permissions import OPERATE_SAGAS, VIEW_ORDERS, WORK_FOLLOWUPS

# One admin action signals each selected saga in turn; beyond this, use the stuck queue's
# bulk action, which runs in the background and shows its progress.
ADMIN_ACTION_MAX_ORDERS = 50
RESTOCK_MAX_QUANTITY = 1_000_000
ADDRESS_FIELDS = ("ship_name", "ship_line1", "ship_line2", "ship_postcode", "ship_city", "ship_country", "phone")


def _staff_order_url(order_id: int) -> str | None:
    try:
        return reverse("orders:detail", args=[order_id])
    except NoReverseMatch:  # the staff pages are not installed
        return None


class ViewOnlyAdmin(admin.ModelAdmin):
    """Rows the admin may look at but never add, change or delete: the services own them."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Reason")
    def short_reason(self, obj):
        return obj.reason if len(obj.reason) <= 80 else obj.reason[:79] + "…"


# --- products -----------------------------------------------------------------------------


class RestockActionForm(ActionForm):
    # A plain text field here: an invalid number would make the admin drop the whole action
    # with "No action selected"; the restock action checks it and says what is wrong.
    quantity = forms.CharField(
        label="Quantity (for restock)", required=False,
        widget=forms.NumberInput(attrs={"style": "width: 7em", "min": 1, "max": RESTOCK_MAX_QUANTITY}),
    )


RESTOCK_QUANTITY = forms.IntegerField(min_value=1, max_value=RESTOCK_MAX_QUANTITY)


class ProductAdminForm(forms.ModelForm):
    class Meta:
        model = Product
        fields = ["sku", "name", "price", "active"]

    def clean_price(self):
        price = self.cleaned_data["price"]
        if price is not None and price <= 0:
            raise forms.ValidationError("The price must be more than zero.")
        return price


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    form = ProductAdminForm
    action_form = RestockActionForm
    list_display = ["sku", "name", "price", "on_hand", "reserved", "sold", "active"]
    list_filter = ["active"]
    search_fields = ["sku", "name"]
    # The counters move only through the saga and the restock action.
    readonly_fields = ["on_hand", "reserved", "sold", "received"]
    fields = ["sku", "name", "price", "active", "on_hand", "reserved", "sold", "received"]
    actions = ["restock", "deactivate"]

    @admin.action(description="Restock selected products (enter the quantity)", permissions=["change"])
    def restock(self, request, queryset):
        try:
            quantity = RESTOCK_QUANTITY.clean(request.POST.get("quantity"))
        except forms.ValidationError:
            quantity = None
        if not quantity:
            messages.error(
                request, f"Enter a quantity between 1 and {RESTOCK_MAX_QUANTITY:,} to restock the selected products."
            )
            return None
        for product in queryset.only("id", "sku"):
            product = product_restock(product_id=product.pk, quantity=quantity)
            messages.success(request, f"{product.sku}: {quantity} added; {product.on_hand} on hand now.")
        return None

    @admin.action(description="Stop selling selected products", permissions=["change"])
    def deactivate(self, request, queryset):
        skus = []
        for product in queryset.only("id", "sku"):
            product_deactivate(product_id=product.pk)
            skus.append(product.sku)
        messages.success(request, f"No longer for sale: {', '.join(skus)}.")


# --- orders -------------------------------------------------------------------------------


class ReadOnlyInline(admin.TabularInline):
    """Ledger rows written by the saga: shown, never added, changed or deleted here."""

    extra = 0
    can_delete = False
    show_change_link = False

    def has_view_permission(self, request, obj=None):
        # Whoever may see the order may see its lines and ledgers.
        return request.user.has_perm(VIEW_ORDERS)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class OrderLineInline(ReadOnlyInline):
    model = OrderLine
    fields = readonly_fields = ["product", "quantity", "unit_price", "line_total"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("product")


class SagaEventInline(ReadOnlyInline):
    model = SagaEvent
    verbose_name_plural = "saga events (timeline)"
    fields = readonly_fields = ["created_at", "step", "kind", "attempt", "detail"]


class PaymentInline(ReadOnlyInline):
    model = Payment
    fields = readonly_fields = ["created_at", "kind", "amount", "currency", "gateway_reference", "idempotency_key"]


class ReservationInline(ReadOnlyInline):
    model = Reservation
    fields = readonly_fields = ["product", "quantity", "state", "created_at", "updated_at"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("product")


class ShipmentInline(ReadOnlyInline):
    model = Shipment
    fields = readonly_fields = [
        "state", "carrier_reference", "parcels_booked", "parcels_total", "created_at", "delivered_at",
        "tracking_ended_at",
    ]


class CarrierEventInline(ReadOnlyInline):
    # What the carrier's webhook reported, as received (stored once per event id).
    model = CarrierEvent
    fields = readonly_fields = ["event", "occurred_at", "event_id", "tracking_number", "received_at"]


class FollowUpInline(ReadOnlyInline):
    model = FollowUp
    fields = readonly_fields = ["kind", "state", "reason", "claimed_by", "notes", "resolution", "created_at",
                                "resolved_at"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("claimed_by")


@admin.register(Order)
class OrderAdmin(ViewOnlyAdmin):
    # Orders are placed on the staff pages and moved only by their saga.
    # Fits 1366 px next to the filters: both states in one column, the customer on two lines,
    # who created the order on its own page.
    list_display = ["number", "customer", "state", "current_step", "total", "created_at", "staff_page"]
    list_filter = ["status", "saga_status", "current_step", "created_at"]
    search_fields = ["number", "customer_email", "customer_name"]
    # No date_hierarchy: its month links come from a DISTINCT over every order of the year
    # (36 ms of a 58 ms page at 100,000 orders); the created_at filter above covers dates.
    list_select_related = False  # no column reads a relation (who created it is on its page)
    # The unfiltered total is one more COUNT over the whole table on every filtered page.
    show_full_result_count = False
    list_per_page = 50
    inlines = [OrderLineInline, SagaEventInline, PaymentInline, ReservationInline, ShipmentInline, CarrierEventInline,
               FollowUpInline]
    readonly_fields = [
        "number", "customer_name", "customer_email", "currency", "total", "status", "saga_status", "current_step",
        "last_error", "stuck_since", "workflow_id", "fault_plan", "created_by", "created_at", "updated_at",
        "last_event_at", "staff_page", *ADDRESS_FIELDS,
    ]
    fieldsets = [
        (None, {"fields": ["number", "staff_page", "customer_name", "customer_email", "currency", "total", "created_by", "created_at"]}),
        # Read-only like the rest: the carrier was booked to this address.
        ("Shipping address", {"fields": list(ADDRESS_FIELDS)}),
        ("Saga", {"fields": ["status", "saga_status", "current_step", "last_error", "stuck_since", "workflow_id", "last_event_at", "updated_at", "fault_plan"]}),
    ]
    actions = ["retry", "compensate", "resend"]

    class Media:
        css = {"all": ["css/admin.css"]}


    def has_operate_saga_permission(self, request):
        return request.user.has_perm(OPERATE_SAGAS)

    def has_work_followups_permission(self, request):
        return request.user.has_perm(WORK_FOLLOWUPS)

    def view_on_site(self, obj):
        return _staff_order_url(obj.pk)

    def action_checkbox(self, obj):
        # Django's own renders a CheckboxInput through the forms' template engine (three
        # nested templates a row): 5-7 ms of the 50-row list. The same markup, escaped once.
        label = gettext("Select this object for an action - {}").format(obj)
        return format_html('<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
                           helpers.ACTION_CHECKBOX_NAME, obj.pk, label)

    @admin.display(description="Customer", ordering="customer_name")
    def customer(self, obj):
        return format_html('{}<br><span class="admin-email">{}</span>', obj.customer_name, obj.customer_email)

    @admin.display(description="State", ordering="status")
    def state(self, obj):
        return format_html("Order: {}<br>Saga: {}", obj.get_status_display(), obj.get_saga_status_display())

    @admin.display(description="Staff page")
    def staff_page(self, obj):
        return render_to_string("admin/orders/order/staff_link.html", {"url": _staff_order_url(obj.pk), "order": obj})

    def _signal_each(self, request, queryset, service, verb: str):
        """Run one ops service per selected order and report each order's result."""
        orders = list(queryset.select_related(None).order_by("pk").only("id", "number")[: ADMIN_ACTION_MAX_ORDERS + 1])
        if len(orders) > ADMIN_ACTION_MAX_ORDERS:
            messages.error(
                request,
                f"Select at most {ADMIN_ACTION_MAX_ORDERS} orders here; for more, use the bulk action on the "
                "stuck sagas page, which runs in the background.",
            )
            return
        for order in orders:
            try:
                audit = service(order_id=order.pk, actor=request.user, reason="from the admin")
            except PermissionDenied as exc:
                messages.error(request, f"{order.number}: {exc}")
            except ops_services.ActionNotAllowed as exc:
                messages.warning(request, f"{order.number}: {exc}")
            else:
                if audit.outcome == OperatorAction.Outcome.FAILED:
                    messages.error(request, f"{order.number}: {verb} failed: {audit.outcome_detail}")
                else:
                    messages.success(request, f"{order.number}: {verb} {audit.outcome}.")

    @admin.action(description="Retry the failed step of selected stuck sagas", permissions=["operate_saga"])
    def retry(self, request, queryset):
        self._signal_each(request, queryset, ops_services.saga_retry, "retry")

    @admin.action(description="Compensate (roll back) selected stuck sagas", permissions=["operate_saga"])
    def compensate(self, request, queryset):
        self._signal_each(request, queryset, ops_services.saga_compensate, "compensate")

    @admin.action(description="Resend the notification of selected follow-ups", permissions=["work_followups"])
    def resend(self, request, queryset):
        self._signal_each(request, queryset, ops_services.followup_resend, "resend")


# --- follow-ups ---------------------------------------------------------------------------


@admin.register(FollowUp)
class FollowUpAdmin(ViewOnlyAdmin):
    """The follow-up list; claiming, notes, resend and resolve live on the follow-up queue."""

    list_display = ["order", "customer", "kind", "state", "short_reason", "claimed_by", "created_at", "resolved_at",
                    "resolution"]
    list_filter = ["state", "kind", "resolution", "created_at"]
    search_fields = ["order__number", "order__customer_email", "order__customer_name", "reason"]
    list_select_related = ["order", "claimed_by"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    fields = readonly_fields = ["order", "state", "reason", "claimed_by", "notes", "resolution", "created_at", "resolved_at"]


    @admin.display(description="Customer", ordering="order__customer_name")
    def customer(self, obj):
        return f"{obj.order.customer_name} <{obj.order.customer_email}>"


# --- returns and refunds ---------------------------------------------------------------------


class ReturnLineInline(admin.TabularInline):
    model = ReturnLine
    fields = readonly_fields = ["order_line", "quantity", "sellable"]
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Return)
class ReturnAdmin(ViewOnlyAdmin):
    """Returns and refunds without a return; staff open and drive them on the order's page."""

    list_display = ["id", "order", "kind", "state", "amount", "short_reason", "created_by", "created_at", "finished_at"]
    list_filter = ["state", "kind", "created_at"]
    search_fields = ["order__number", "order__customer_email", "reason", "refund_key"]
    list_select_related = ["order", "created_by"]
    show_full_result_count = False
    fields = readonly_fields = [
        "order", "kind", "state", "reason", "amount", "include_shipping", "shipping_amount", "deadline",
        "received_source", "last_error", "workflow_id", "refund_key", "created_by", "created_at", "finished_at",
    ]
    inlines = [ReturnLineInline]


# --- the audit log --------------------------------------------------------------------------


@admin.register(OperatorAction)
class OperatorActionAdmin(ViewOnlyAdmin):
    list_display = ["created_at", "action", "order", "actor", "outcome", "short_reason"]
    list_filter = ["action", "outcome", "created_at"]
    search_fields = ["order__number", "actor__username", "reason"]
    list_select_related = ["order", "actor"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    fields = readonly_fields = [
        "created_at", "updated_at", "order", "action", "actor", "reason", "outcome", "outcome_detail",
    ]


# Alert incidents and messages: their admin lives with them (ops/alerts/admin.py), imported
# here because Django's autodiscovery imports only this module.
from .alerts import admin as _alerts_admin  # noqa: E402,F401
