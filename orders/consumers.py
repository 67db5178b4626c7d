"""The customer's live order page (ws/status/<token>/). Staff sockets are ops'."""

from django.template.loader import render_to_string

from .broadcast import order_group
from .live import CLOSE_NOT_FOUND, LiveConsumer, access_checks, database_read, shared_renders
from .models import Order
from .presenters import customer_status_present
from .selectors.customer import customer_order, order_by_public_token


def render_customer(order_id: int) -> str:
    order = Order.objects.filter(pk=order_id).first()
    if order is None:
        return ""
    return render_to_string("orders/partials/customer_status.html",
                            {"status": customer_status_present(customer_order(order)), "oob": True,
                             "order_id": order.pk})


def customer_order_id(token: str) -> int | None:
    order = order_by_public_token(token)
    return order.pk if order else None


class CustomerStatusConsumer(LiveConsumer):
    """ws/status/<token>/: the customer's view of their one order. No login; the token is the key."""

    async def connect(self):
        token = self.scope["url_route"]["kwargs"]["token"]
        self.order_id = await database_read(customer_order_id, token)
        if self.order_id is None:
            await self.refuse(CLOSE_NOT_FOUND)
            return
        self.access_checked()
        await self.join(order_group(self.order_id))
        await self.accept()
        await self.send_safely(lambda: database_read(render_customer, self.order_id))

    async def still_allowed(self) -> bool:
        # The token is the key: it must still open this order (an order erased, say, closes it).
        token = self.scope["url_route"]["kwargs"]["token"]
        return await access_checks.get(("customer", token), customer_order_id, token) == self.order_id

    async def saga_event(self, message):
        event_id = message["event"]["id"]
        await self.send_safely(lambda: shared_renders.get(("customer", self.order_id, event_id),
                                                          render_customer, self.order_id))
