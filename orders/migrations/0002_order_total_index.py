"""An index for the order list's "highest/lowest total" sort.

Without it, sorting 100,000 orders by total reads and sorts the whole table for every page
(about 30 ms of query alone on SQLite); with it the first page is an index walk.

Created with SQL rather than AddIndex because the Order model (orders/models.py) is owned
elsewhere: declaring models.Index(fields=["-total", "-id"], name="order_total_id") in
Order.Meta.indexes and swapping this for AddIndex is the tidy follow-up. The SQL is the same
on SQLite and Postgres.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0001_initial"),
    ]

    operations = [
        migrations.RunSQL(
            sql='CREATE INDEX IF NOT EXISTS "order_total_id" ON "orders_order" ("total" DESC, "id" DESC)',
            reverse_sql='DROP INDEX IF EXISTS "order_total_id"',
        ),
    ]
