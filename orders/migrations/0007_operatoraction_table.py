"""ops_operatoraction becomes orders_operatoraction (a rename: rows and keys stay)."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('orders', '0006_operatoraction'),
        ('ops', '0003_operatoraction_to_orders'),
    ]

    operations = [
        migrations.AlterModelTable(name='operatoraction', table=None),
    ]
