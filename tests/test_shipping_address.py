"""The shipping address and phone: checked once (orders.addresses), kept on the order,
shown to staff and to the customer, and given to the carrier, which refuses what it cannot serve."""

import pytest
from asgiref.sync import sync_to_async
from django.urls import reverse

from orders.addresses import AddressInvalid, address_clean
from orders.models import Order, SagaEvent
from orders.services.ordering import OrderRejected

from .factories import AMSTERDAM, make_order, make_product
from .saga_states import order_advanced


def test_address_is_normalised():
    address = address_clean(name="  Ada   Lovelace ", line1="Keizersgracht  1", postcode="1015cj", city="Amsterdam",
                            country="nl", phone=" +31 (20) 123-4567 ")
    assert (address.name, address.line1, address.postcode, address.country) == (
        "Ada Lovelace", "Keizersgracht 1", "1015CJ", "NL")
    assert address.lines() == ["Ada Lovelace", "Keizersgracht 1", "1015CJ Amsterdam", "Netherlands"]


@pytest.mark.parametrize(("overrides", "field", "message"), [
    ({"line1": ""}, "ship_line1", "Enter the street"),
    ({"postcode": "ABC"}, "ship_postcode", "ABC is not a postcode in Netherlands."),
    ({"country": "ZZ"}, "ship_country", "Choose a country we ship to."),
    ({"country": "DE", "postcode": "1015 CJ"}, "ship_postcode", "not a postcode in Germany"),
    ({"phone": "12345"}, "phone", "7 to 15 digits"),
    ({"phone": "+31 20 123 4567 8901 234"}, "phone", "7 to 15 digits"),
    ({"phone": "ring ring"}, "phone", "7 to 15 digits"),
    ({"city": "x" * 101}, "ship_city", "under 100 characters"),
])
def test_bad_address_says_which_field_and_why(overrides, field, message):
    with pytest.raises(AddressInvalid) as invalid:
        address_clean(**{**AMSTERDAM, **overrides})
    assert message in invalid.value.errors[field]


@pytest.mark.django_db
def test_order_create_checks_the_address_and_saves_nothing_when_bad():
    with pytest.raises(OrderRejected) as rejected:
        make_order(start_saga=False, shipping_address={**AMSTERDAM, "postcode": ""})
    assert rejected.value.errors == {"ship_postcode": "Enter the postcode."}
    with pytest.raises(OrderRejected) as rejected:
        make_order(start_saga=False, shipping_address={"line1": "only a street"})
    assert "Incomplete address" in rejected.value.errors["shipping_address"]
    assert not Order.objects.exists()


@pytest.mark.django_db
def test_created_in_the_form_with_address_shown_to_staff_and_customer(client_as, client):
    product = make_product()
    staff = client_as("operator")
    response = staff.post(reverse("orders:create"), {
        "customer_name": "Grace Hopper", "customer_email": "grace@example.com", "line-0-product": str(product.pk),
        "line-0-quantity": "1", "ship_line1": "Unter den Linden 5", "ship_line2": "3. OG", "ship_postcode": "10117",
        "ship_city": "Berlin", "ship_country": "DE", "phone": "+49 30 1234567",
    })
    assert response.status_code == 302
    order = Order.objects.get()
    assert (order.ship_name, order.ship_line1, order.ship_line2, order.ship_postcode, order.ship_city,
            order.ship_country, order.phone) == (
        "Grace Hopper", "Unter den Linden 5", "3. OG", "10117", "Berlin", "DE", "+49 30 1234567")
    detail = staff.get(reverse("orders:detail", args=[order.pk])).content.decode()
    assert "Unter den Linden 5" in detail and "10117 Berlin" in detail and "Germany" in detail
    assert 'href="tel:+49301234567"' in detail

    order_advanced(order, through="ship")
    customer = client.get(reverse("customer:status", args=[order.public_token])).content.decode()
    assert "Unter den Linden 5" in customer and "Germany" in customer
    assert "Tracking number" in customer


@pytest.mark.django_db
def test_admin_shows_the_address(admin_client):
    order = make_order(start_saga=False, shipping_address=AMSTERDAM)
    page = admin_client.get(reverse("admin:orders_order_change", args=[order.pk])).content.decode()
    assert "Shipping address" in page and "Keizersgracht 1" in page and "+31 20 123 4567" in page


@pytest.mark.django_db(transaction=True)
async def test_carrier_gets_the_address_and_refuses_one_it_cannot_serve(saga_env):
    # The sandbox carrier serves Europe: a Canadian address is refused at booking and the sale rolled back.
    product = await sync_to_async(make_product)(stock=2)
    order = await sync_to_async(make_order)(products=[(product, 1)], shipping_address={
        **AMSTERDAM, "postcode": "K1A 0B1", "city": "Ottawa", "country": "CA"})
    assert await saga_env.result(order) == "compensated"
    failed = await sync_to_async(lambda: SagaEvent.objects.get(order=order, step="ship", kind="failed").detail)()
    assert "address not serviceable" in failed and "CA" in failed

    served = await sync_to_async(make_order)(products=[(product, 1)], shipping_address=AMSTERDAM)
    assert await saga_env.result(served) == "completed"
