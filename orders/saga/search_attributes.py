"""The saga's search attributes as typed keys, built from the one list in
ordersite/search_attributes.py (which the run command and docker-compose read too)."""

from temporalio.common import SearchAttributeKey

from ordersite.search_attributes import SEARCH_ATTRIBUTES

_KEY_FACTORIES = {
    "Int": SearchAttributeKey.for_int,
    "Keyword": SearchAttributeKey.for_keyword,
    "Double": SearchAttributeKey.for_float,
}
_KEYS = {name: _KEY_FACTORIES[kind](name) for name, kind in SEARCH_ATTRIBUTES.items()}

ORDER_ID = _KEYS["OrderId"]
CUSTOMER_ID = _KEYS["CustomerId"]
ORDER_AMOUNT = _KEYS["OrderAmount"]
SAGA_STATUS = _KEYS["SagaStatus"]
CURRENT_STEP = _KEYS["CurrentStep"]

ALL = list(_KEYS.values())


def cli_flags() -> list[str]:
    """`--search-attribute Name=Type` flags for `temporal server start-dev`."""
    return [flag for name, kind in SEARCH_ATTRIBUTES.items() for flag in ("--search-attribute", f"{name}={kind}")]
