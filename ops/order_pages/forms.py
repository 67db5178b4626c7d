"""Forms of the order pages: list filters, the create-order form, an operator action's reason.

Forms parse and check input for the page; the services (order_create,
operator_action_request) still validate on their own, and their errors are shown on
the same fields.
"""

import re
from decimal import Decimal

from django import forms
from django.conf import settings

from orders.addresses import COUNTRIES, FIELD_LIMITS, AddressInvalid, ShippingAddress, address_clean
from orders.faults import PRESETS
from orders.models import Product
from orders.services.ordering import LineRequest
from orders.status import OrderStatus, SagaStatus, Step

from ..dates import shop_date_field
from .selectors import DEFAULT_SORT, LIST_SORTS, OrderListFilters

SORT_LABELS = {
    "-created": "Newest first",
    "created": "Oldest first",
    "-total": "Highest total",
    "total": "Lowest total",
    "status": "Status (A–Z)",
    "-status": "Status (Z–A)",
}


class DateRangeCheck:
    """For filter forms with date_from/date_to: an end before the start is an error."""

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("date_from"), cleaned.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", "The end date is before the start date.")
        return cleaned


class OrderFilterForm(DateRangeCheck, forms.Form):
    """The list's filters. Invalid values are reported and then ignored, never a 500."""

    q = forms.CharField(required=False, max_length=200, label="Search",
                        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Order number, email or name"}))
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *OrderStatus.choices], label="Order status")
    saga_status = forms.ChoiceField(required=False, choices=[("", "Any saga state"), *SagaStatus.choices],
                                    label="Saga state")
    step = forms.ChoiceField(required=False, choices=[("", "Any step"), *Step.choices], label="Current step")
    stuck = forms.BooleanField(required=False, label="Stuck")
    needs_followup = forms.BooleanField(required=False, label="Needs follow-up")
    date_from = shop_date_field("Created from")
    date_to = shop_date_field("Created to")
    sort = forms.ChoiceField(required=False, choices=[(k, SORT_LABELS[k]) for k in LIST_SORTS], label="Sort by")


    def filters(self) -> OrderListFilters:
        """The valid part of the input as filters (call after is_valid())."""
        data = getattr(self, "cleaned_data", {})
        return OrderListFilters(
            status=data.get("status") or "",
            saga_status=data.get("saga_status") or "",
            step=data.get("step") or "",
            stuck=bool(data.get("stuck")),
            needs_followup=bool(data.get("needs_followup")),
            date_from=data.get("date_from"),
            date_to=data.get("date_to") if "date_to" not in self.errors else None,
            q=data.get("q") or "",
            sort=data.get("sort") or DEFAULT_SORT,
        )


# --- creating an order ----------------------------------------------------------------

INITIAL_LINES = 3
MAX_LINES = 20
_LINE_FIELD = re.compile(r"^line-(\d{1,2})-(product|quantity)$")


def line_indices(data) -> list[int]:
    """Which line rows the submitted form has (rows can be added on the page)."""
    found = {int(m.group(1)) for key in data for m in [_LINE_FIELD.match(key)] if m}
    return sorted(i for i in found if i < MAX_LINES) or list(range(INITIAL_LINES))


def product_choice_label(product: Product) -> str:
    stock = f"{product.on_hand} in stock" if product.on_hand else "out of stock"
    return f"{product.name} — {product.price} {settings.SHOP_CURRENCY} — {stock}"


class OrderCreateForm(forms.Form):
    """Customer, product lines (line-<i>-product / line-<i>-quantity) and, in the sandbox, a fault plan."""

    customer_name = forms.CharField(
        max_length=200, label="Customer name",
        error_messages={"required": "Enter the customer's name.",
                        "max_length": "Keep the name under %(limit_value)d characters."},
        widget=forms.TextInput(attrs={"autocomplete": "name"}),
    )
    customer_email = forms.EmailField(
        max_length=254, label="Customer email",
        error_messages={"required": "Enter the customer's email address.", "invalid": "Enter a valid email address."},
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )
    # The shipping address: orders.addresses checks it in clean(), and order_create again.
    ship_name = forms.CharField(required=False, max_length=FIELD_LIMITS["ship_name"], label="Recipient",
                                help_text="Leave empty to address the parcel to the customer.")
    ship_line1 = forms.CharField(required=False, max_length=FIELD_LIMITS["ship_line1"], label="Street and number",
                                 widget=forms.TextInput(attrs={"autocomplete": "address-line1"}))
    ship_line2 = forms.CharField(required=False, max_length=FIELD_LIMITS["ship_line2"], label="Address line 2",
                                 widget=forms.TextInput(attrs={"autocomplete": "address-line2"}))
    ship_postcode = forms.CharField(required=False, max_length=FIELD_LIMITS["ship_postcode"], label="Postcode",
                                    widget=forms.TextInput(attrs={"autocomplete": "postal-code"}))
    ship_city = forms.CharField(required=False, max_length=FIELD_LIMITS["ship_city"], label="City",
                                widget=forms.TextInput(attrs={"autocomplete": "address-level2"}))
    ship_country = forms.ChoiceField(
        required=False, label="Country",
        choices=[("", "Choose a country…"), *sorted(COUNTRIES.items(), key=lambda item: item[1])],
        error_messages={"invalid_choice": "Choose a country we ship to."},
    )
    phone = forms.CharField(required=False, max_length=FIELD_LIMITS["phone"], label="Phone",
                            help_text="For the carrier, and for us if a delivery goes wrong.",
                            widget=forms.TextInput(attrs={"type": "tel", "autocomplete": "tel"}))
    fault_preset = forms.ChoiceField(
        required=False, label="Fault plan (sandbox)",
        choices=[(key, label) for key, (label, _plan) in PRESETS.items()],
        error_messages={"invalid_choice": "Choose one of the listed fault plans."},
    )

    def __init__(self, data=None, *, products: list[Product], faults_enabled: bool, indices: list[int] | None = None):
        super().__init__(data)
        self.products = {p.pk: p for p in products}
        self.faults_enabled = faults_enabled
        if indices is None:
            indices = line_indices(data) if data is not None else list(range(INITIAL_LINES))
        self.indices = indices
        choices = [("", "Choose a product…"), *((p.pk, product_choice_label(p)) for p in products)]
        limit = settings.MAX_LINE_QUANTITY
        for i in self.indices:
            self.fields[f"line-{i}-product"] = forms.TypedChoiceField(
                choices=choices, coerce=int, required=False, empty_value=None, label="Product",
                error_messages={"invalid_choice": "That product is not for sale."},
            )
            self.fields[f"line-{i}-quantity"] = forms.IntegerField(
                required=False, min_value=1, max_value=limit, label="Quantity",
                widget=forms.NumberInput(attrs={"min": 1, "max": limit, "inputmode": "numeric"}),
                error_messages={
                    "invalid": "Enter a whole number.",
                    "min_value": "The quantity must be at least 1.",
                    "max_value": f"At most {limit} of one product per order.",
                },
            )
        for name, field in self.fields.items():
            field.widget.attrs.setdefault("id", f"id_{name}")
            field.widget.attrs["aria-describedby"] = f"error-{name}"
            if self.is_bound and name in self.errors:
                field.widget.attrs["aria-invalid"] = "true"

    # -- validation ---------------------------------------------------------------------

    def clean_fault_preset(self) -> str:
        preset = self.cleaned_data.get("fault_preset") or ""
        if preset and not self.faults_enabled:
            raise forms.ValidationError("Fault injection is switched off on this system.")
        return preset

    def clean(self):
        cleaned = super().clean()
        quantities: dict[int, int] = {}
        for i in self.indices:
            product_key, quantity_key = f"line-{i}-product", f"line-{i}-quantity"
            if product_key in self.errors or quantity_key in self.errors:
                continue
            product_id, quantity = cleaned.get(product_key), cleaned.get(quantity_key)
            if product_id is None and quantity is None:
                continue  # an empty row
            if product_id is None:
                self.add_error(product_key, "Choose a product for this quantity.")
            elif quantity is None:
                self.add_error(quantity_key, "Enter a quantity.")
            else:
                quantities[product_id] = quantities.get(product_id, 0) + quantity
        if not quantities and not any(f"line-{i}-{part}" in self.errors for i in self.indices
                                      for part in ("product", "quantity")):
            self.add_error(None, forms.ValidationError("Add at least one product.", code="no_lines"))
        for product_id, quantity in quantities.items():
            if quantity > settings.MAX_LINE_QUANTITY:
                name = self.products[product_id].name
                self.add_error(None, f"{name} is on several lines: at most {settings.MAX_LINE_QUANTITY} in total.")
        self._check_stock(quantities)
        total = self._total(quantities)
        if total > settings.MAX_ORDER_TOTAL:
            self.add_error(None, f"The order total {total} {settings.SHOP_CURRENCY} is over the limit of "
                                 f"{settings.MAX_ORDER_TOTAL} {settings.SHOP_CURRENCY}.")
        self.quantities = quantities
        self._clean_address(cleaned)
        return cleaned

    ADDRESS_FIELDS = ("ship_name", "ship_line1", "ship_line2", "ship_postcode", "ship_city", "ship_country", "phone")

    def _clean_address(self, cleaned) -> None:
        self.address: ShippingAddress | None = None
        if any(name in self.errors for name in self.ADDRESS_FIELDS):
            return
        try:
            self.address = address_clean(
                name=cleaned.get("ship_name") or cleaned.get("customer_name") or "",
                line1=cleaned.get("ship_line1", ""), line2=cleaned.get("ship_line2", ""),
                postcode=cleaned.get("ship_postcode", ""), city=cleaned.get("ship_city", ""),
                country=cleaned.get("ship_country", ""), phone=cleaned.get("phone", ""),
            )
        except AddressInvalid as invalid:
            for field, message in invalid.errors.items():
                # No customer name yet: the name field already says so.
                if field == "ship_name" and not cleaned.get("customer_name"):
                    continue
                self.add_error(field, message)

    def _check_stock(self, quantities: dict[int, int]) -> None:
        """More than is on the shelf now is refused here, not left to fail at reserve. Stock
        can still change before the saga reserves; its reserve step stays the truth."""
        for product_id, quantity in quantities.items():
            product = self.products[product_id]
            if quantity <= product.on_hand:
                continue
            have = f"only {product.on_hand} in stock" if product.on_hand else "out of stock"
            message = f"{product.name} is {have}: lower the quantity to {product.on_hand} or less."
            if not product.on_hand:
                message = f"{product.name} is out of stock: remove this line."
            rows = [i for i in self.indices if self.cleaned_data.get(f"line-{i}-product") == product_id]
            if len(rows) == 1:
                self.add_error(f"line-{rows[0]}-quantity", message)
            else:
                self.add_error(None, f"{product.name} is on several lines, {quantity} in all: {have}.")

    def _total(self, quantities: dict[int, int]) -> Decimal:
        return sum((self.products[pid].price * qty for pid, qty in quantities.items()), Decimal(0))

    def add_service_errors(self, errors: dict[str, str]) -> None:
        """Show order_create's OrderRejected.errors on the matching fields."""
        for key, message in errors.items():
            field = {"fault_plan": "fault_preset"}.get(key, key)
            if field in self.fields:
                self.add_error(field, message)
                self.fields[field].widget.attrs["aria-invalid"] = "true"
            else:
                self.add_error(None, message)

    # -- what the service gets ------------------------------------------------------------

    def line_requests(self) -> list[LineRequest]:
        return [LineRequest(product_id=pid, quantity=qty) for pid, qty in self.quantities.items()]

    def shipping_address(self) -> ShippingAddress | None:
        return self.address

    def fault_plan(self) -> dict | None:
        preset = self.cleaned_data.get("fault_preset") or ""
        return dict(PRESETS[preset][1]) if preset else None

    # -- what the page shows ----------------------------------------------------------------

    def line_rows(self):
        """Bound fields and stock hint per line row, for the template."""
        rows = []
        for i in self.indices:
            product = self[f"line-{i}-product"]
            quantity = self[f"line-{i}-quantity"]
            rows.append({"index": i, "index_str": str(i), "number": i + 1, "product": product,
                         "quantity": quantity, "hint": self._stock_hint(i)})
        return rows

    def _raw_int(self, name: str) -> int | None:
        try:
            return int(self.data.get(name, ""))
        except (TypeError, ValueError):
            return None

    def _stock_hint(self, i: int) -> str:
        if not self.is_bound:
            return ""
        product = self.products.get(self._raw_int(f"line-{i}-product"))
        quantity = self._raw_int(f"line-{i}-quantity")
        if product is None:
            return ""
        if quantity and quantity > product.on_hand:
            return f"Only {product.on_hand} in stock."
        return f"{product.price} {settings.SHOP_CURRENCY} each, {product.on_hand} in stock."

    max_lines = MAX_LINES

    @property
    def currency(self) -> str:
        return settings.SHOP_CURRENCY

    @property
    def next_index(self) -> int:
        return max(self.indices, default=-1) + 1

    def total_preview(self) -> Decimal | None:
        """The total of the lines entered so far that parse (for the live preview)."""
        if not self.is_bound:
            return None
        total = Decimal(0)
        for i in self.indices:
            product = self.products.get(self._raw_int(f"line-{i}-product"))
            quantity = self._raw_int(f"line-{i}-quantity")
            if product and quantity and quantity > 0:
                total += product.price * quantity
        return total

    def live_errors(self) -> dict[str, list[str]]:
        """Errors to show while typing: only for fields that have a value, so an untouched
        field does not shout; the submit shows everything."""
        shown: dict[str, list[str]] = {}
        for name in self.fields:
            raw = self.data.get(name, "")
            shown[name] = list(self.errors.get(name, [])) if str(raw).strip() else []
        shown["lines"] = [e.message for e in self.non_field_errors().as_data() if e.code != "no_lines"]
        return shown


class OperatorActionForm(forms.Form):
    reason = forms.CharField(required=False, max_length=2000, label="Reason",
                             error_messages={"max_length": "Keep the reason under %(limit_value)d characters."})
