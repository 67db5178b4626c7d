"""The record of operator commands moves from ops to orders (state only: the table is
renamed in 0006), and saga events get a foreign key to the command that caused them."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('orders', '0005_sandbox_models_moved_out'),
        ('ops', '0002_background_operations'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name='OperatorAction',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('action', models.CharField(choices=[('retry', 'Retry'), ('compensate', 'Compensate'), ('cancel', 'Cancel'), ('resend', 'resend notification'), ('resolved', 'resolve follow-up')], max_length=20)),
                        ('reason', models.TextField(blank=True)),
                        ('outcome', models.CharField(choices=[('requested', 'Requested'), ('sent', 'Sent'), ('applied', 'Applied'), ('ignored', 'Ignored'), ('failed', 'Failed')], default='requested', max_length=20)),
                        ('outcome_detail', models.TextField(blank=True)),
                        ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('actor', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
                        ('order', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='operator_actions', to='orders.order')),
                    ],
                    options={
                        'ordering': ['-created_at', '-id'],
                        'indexes': [models.Index(fields=['order', '-created_at'], name='opaction_order_created')],
                        # Still ops' table until 0006 renames it.
                        'db_table': 'ops_operatoraction',
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.AddField(
            model_name='sagaevent',
            name='operator_action',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='saga_events', to='orders.operatoraction'),
        ),
    ]
