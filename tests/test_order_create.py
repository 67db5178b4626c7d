"""The create-order page: the form, its live validation, extra line rows, and the service's
rejections shown on their fields."""

import re
from decimal import Decimal

import pytest
from django.urls import reverse

from ops.order_pages.forms import OrderCreateForm
from orders.models import Order

from .factories import SHIPPING_FORM, make_product

pytestmark = pytest.mark.django_db


def _create_data(product, **overrides) -> dict:
    data = {"customer_name": "Grace Hopper", "customer_email": "grace@example.com",
            "line-0-product": str(product.pk), "line-0-quantity": "2", "fault_preset": "", **SHIPPING_FORM}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


BAD_INPUT = [
    ({"customer_name": ""}, "customer_name", "Enter the customer&#x27;s name."),
    ({"customer_name": "   "}, "customer_name", "Enter the customer&#x27;s name."),
    ({"customer_email": "not-an-email"}, "customer_email", "Enter a valid email address."),
    ({"line-0-quantity": "0"}, "line-0-quantity", "The quantity must be at least 1."),
    ({"line-0-quantity": "-3"}, "line-0-quantity", "The quantity must be at least 1."),
    ({"line-0-quantity": "100000000000000000000"}, "line-0-quantity", "At most 100 of one product per order."),
    ({"line-0-quantity": "two"}, "line-0-quantity", "Enter a whole number."),
    ({"line-0-quantity": "1.5"}, "line-0-quantity", "Enter a whole number."),
    ({"line-0-product": "999999"}, "line-0-product", "That product is not for sale."),
    ({"line-0-product": "abc"}, "line-0-product", "That product is not for sale."),
    ({"line-0-quantity": ""}, "line-0-quantity", "Enter a quantity."),
    ({"line-0-product": "", "line-0-quantity": ""}, "lines", "Add at least one product."),
    ({"fault_preset": "no-such-plan"}, "fault_preset", "Choose one of the listed fault plans."),
    ({"ship_line1": " "}, "ship_line1", "Enter the street and house number."),
    ({"ship_city": ""}, "ship_city", "Enter the town or city."),
    ({"ship_country": ""}, "ship_country", "Choose the country the parcel goes to."),
    ({"ship_country": "XX"}, "ship_country", "Choose a country we ship to."),
    ({"ship_postcode": ""}, "ship_postcode", "Enter the postcode."),
    ({"ship_postcode": "12345"}, "ship_postcode", "12345 is not a postcode in Netherlands."),
    ({"phone": "call me"}, "phone", "Enter a phone number of 7 to 15 digits"),
    ({"phone": "+1 2"}, "phone", "Enter a phone number of 7 to 15 digits"),
]


@pytest.mark.parametrize(("overrides", "field", "message"), BAD_INPUT)
def test_create_form_bad_input_gives_field_errors_and_creates_nothing(client_as, overrides, field, message):
    product = make_product(price="10.00", stock=50)
    client = client_as("operator")
    response = client.post(reverse("orders:create"), _create_data(product, **overrides))
    assert response.status_code == 400
    html = response.content.decode()
    slot = re.search(rf'<ul id="error-{field}"[^>]*>(.*?)</ul>', html, re.DOTALL)
    assert slot and message in slot.group(1), html
    assert "The order was not created" in html
    assert not Order.objects.exists()


def test_create_form_rejects_inactive_product_and_over_limit_total(client_as, settings):
    settings.MAX_ORDER_TOTAL = Decimal("100.00")
    inactive = make_product(price="5.00")
    inactive.active = False
    inactive.save()
    dear = make_product(price="60.00")
    client = client_as("operator")
    html = client.post(reverse("orders:create"), _create_data(inactive)).content.decode()
    assert "That product is not for sale." in html
    html = client.post(reverse("orders:create"), _create_data(dear, **{"line-0-quantity": "2"})).content.decode()
    assert "is over the limit of 100.00 EUR" in html
    assert not Order.objects.exists()


def test_create_form_fault_plan_only_when_sandbox_faults_are_on(client_as, settings):
    product = make_product()
    client = client_as("operator")
    settings.SANDBOX_FAULTS_ENABLED = False
    assert 'name="fault_preset"' not in client.get(reverse("orders:create")).content.decode()
    response = client.post(reverse("orders:create"), _create_data(product, fault_preset="decline"))
    assert response.status_code == 400
    assert "Fault injection is switched off on this system." in response.content.decode()
    assert not Order.objects.exists()

    settings.SANDBOX_FAULTS_ENABLED = True
    assert 'name="fault_preset"' in client.get(reverse("orders:create")).content.decode()
    response = client.post(reverse("orders:create"), _create_data(product, fault_preset="decline"))
    order = Order.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("orders:detail", args=[order.pk])
    assert order.fault_plan == {"payment": "decline"}


def test_create_form_creates_the_order_with_its_lines(client_as):
    mug, lamp = make_product(price="12.50", stock=5, name="Mug"), make_product(price="89.00", stock=1, name="Lamp")
    client = client_as("operator")
    page = client.get(reverse("orders:create")).content.decode()
    assert "Mug — 12.50 EUR — 5 in stock" in page and "Lamp — 89.00 EUR — 1 in stock" in page
    data = _create_data(mug, **{"line-0-quantity": "3", "line-1-product": str(lamp.pk), "line-1-quantity": "1",
                                "line-2-product": "", "line-2-quantity": ""})
    response = client.post(reverse("orders:create"), data)
    order = Order.objects.get()
    assert response.status_code == 302
    assert order.customer_name == "Grace Hopper" and order.total == Decimal("126.50")
    assert sorted((line.product.name, line.quantity) for line in order.lines.all()) == [("Lamp", 1), ("Mug", 3)]
    assert order.created_by.groups.get().name == "operator"


def test_live_validation_reports_and_clears_each_field(client_as):
    product = make_product(price="10.00", stock=3)
    client = client_as("operator")
    url = reverse("orders:create_validate")
    response = client.post(url, {"customer_name": "", "customer_email": "nope", "line-0-product": str(product.pk),
                                 "line-0-quantity": "7"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200

    def slot(name):
        return re.search(rf'<ul id="error-{name}" [^>]*hx-swap-oob="true">(.*?)</ul>', html, re.DOTALL).group(1)

    assert "Enter a valid email address." in slot("customer_email")
    assert slot("customer_name") == ""  # untouched fields are not shouted at while typing
    assert "only 3 in stock: lower the quantity to 3 or less." in slot("line-0-quantity")  # refused, not warned
    assert "70.00 EUR" in html
    html = client.post(url, {"customer_email": "ok@example.com", "line-0-product": str(product.pk),
                             "line-0-quantity": "x"}, HTTP_HX_REQUEST="true").content.decode()
    assert slot("customer_email") == ""
    assert "Enter a whole number." in slot("line-0-quantity")
    assert not Order.objects.exists()


def test_add_line_returns_a_row_and_the_next_button(client_as):
    make_product(name="Kettle")
    client = client_as("operator")
    html = client.get(reverse("orders:create_line") + "?index=3").content.decode()
    assert 'id="line-row-3"' in html and 'name="line-3-product"' in html and "Kettle" in html
    assert "index=4" in html and 'hx-swap-oob="true"' in html
    html = client.get(reverse("orders:create_line") + "?index=20").content.decode()
    assert "line-row" not in html and "at most 20 lines" in html
    assert client.get(reverse("orders:create_line") + "?index=zz").status_code == 200


def test_form_shows_service_rejections_on_their_fields():
    product = make_product()
    form = OrderCreateForm({"customer_name": "A", "customer_email": "a@example.com",
                            "line-0-product": str(product.pk), "line-0-quantity": "1",
                            "ship_line1": "Keizersgracht 1", "ship_postcode": "1015 CJ", "ship_city": "Amsterdam",
                            "ship_country": "NL"},
                           products=[product], faults_enabled=True)
    assert form.is_valid()
    form.add_service_errors({"customer_email": "Enter a valid email address.", "fault_plan": "bad plan",
                             "lines": "Some products are not for sale: 7"})
    assert form.errors["customer_email"] == ["Enter a valid email address."]
    assert form.errors["fault_preset"] == ["bad plan"]
    assert form.non_field_errors() == ["Some products are not for sale: 7"]


def test_more_than_in_stock_is_refused_and_nothing_is_created(client_as):
    lamp = make_product(price="89.00", stock=3, name="Lamp")
    empty = make_product(price="5.00", stock=0, name="Mug")
    client = client_as("operator")
    data = {"customer_name": "Grace", "customer_email": "grace@example.com",
            "line-0-product": str(lamp.pk), "line-0-quantity": "4"}
    response = client.post(reverse("orders:create"), data)
    html = response.content.decode()
    assert response.status_code == 400 and not Order.objects.exists()
    assert "Lamp is only 3 in stock: lower the quantity to 3 or less." in html
    response = client.post(reverse("orders:create"), {**data, "line-0-quantity": "1",
                                                       "line-1-product": str(empty.pk), "line-1-quantity": "1"})
    assert response.status_code == 400 and "Mug is out of stock: remove this line." in response.content.decode()
    # Two rows of one product add up.
    response = client.post(reverse("orders:create"), {**data, "line-0-quantity": "2",
                                                       "line-1-product": str(lamp.pk), "line-1-quantity": "2"})
    assert "Lamp is on several lines, 4 in all: only 3 in stock." in response.content.decode()
    assert not Order.objects.exists()
