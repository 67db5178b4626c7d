"""The transaction of a saga step's service.

A step that touches only our database runs its 'started' event and its effect in one
transaction (orders/saga/activities.py, `own_database_only`), so the services it calls open
their atomic blocks inside an outer one. By default Django makes each nested block a
savepoint: two more statements apiece (SAVEPOINT, RELEASE), six pairs in every saga, for a
partial rollback nobody uses: an exception in these services always leaves the outer block
too, which rolls back the step's whole transaction.
"""

from django.db import transaction


def step_atomic():
    """transaction.atomic() for a step's service: its own transaction when called alone; when
    nested, part of the caller's without a savepoint. So a caller holding a transaction
    must not catch the service's exception and go on writing in it (Django marks the
    transaction for rollback, and the next query fails with TransactionManagementError)."""
    return transaction.atomic(savepoint=False)
