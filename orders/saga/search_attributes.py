"""The saga's search attributes. Registered on every Temporal server the app uses
(the run command, the tests' dev server and docker-compose all read ALL from here)."""

from temporalio.common import SearchAttributeKey

ORDER_ID = SearchAttributeKey.for_int("OrderId")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
ORDER_AMOUNT = SearchAttributeKey.for_float("OrderAmount")
SAGA_STATUS = SearchAttributeKey.for_keyword("SagaStatus")
CURRENT_STEP = SearchAttributeKey.for_keyword("CurrentStep")

ALL = [ORDER_ID, CUSTOMER_ID, ORDER_AMOUNT, SAGA_STATUS, CURRENT_STEP]


def cli_flags() -> list[str]:
    """`--search-attribute Name=Type` flags for `temporal server start-dev`."""
    names = {"INT": "Int", "KEYWORD": "Keyword", "DOUBLE": "Double"}
    return [
        flag
        for key in ALL
        for flag in ("--search-attribute", f"{key.name}={names[key.indexed_value_type.name.removeprefix('INDEXED_VALUE_TYPE_')]}")
    ]
