"""OperatorAction now lives in orders (orders 0005 took over the model, 0006 renames the
table); the staff permissions stay ops' own, on StaffPermissions (no table).

Content types and permissions move with the model, so groups and users keep what they
were granted: the operatoraction content type becomes orders', and operate_saga /
work_followups go over to ops.staffpermissions, keeping their `ops.` codenames.
"""

import django.db.models.deletion
from django.db import migrations, models

STAFF_CODENAMES = ("operate_saga", "work_followups")


def content_types_forward(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    db = schema_editor.connection.alias
    old = ContentType.objects.using(db).filter(app_label="ops", model="operatoraction").first()
    if old is None:
        return  # a fresh database: post_migrate creates them as they are now
    staff, _ = ContentType.objects.using(db).get_or_create(app_label="ops", model="staffpermissions")
    Permission.objects.using(db).filter(content_type=old, codename__in=STAFF_CODENAMES).update(content_type=staff)
    new = ContentType.objects.using(db).filter(app_label="orders", model="operatoraction").first()
    if new is None:
        old.app_label = "orders"
        old.save(update_fields=["app_label"])
    else:
        Permission.objects.using(db).filter(content_type=old).exclude(
            codename__in=Permission.objects.using(db).filter(content_type=new).values("codename")
        ).update(content_type=new)
        old.delete()


def content_types_backward(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    db = schema_editor.connection.alias
    moved = ContentType.objects.using(db).filter(app_label="orders", model="operatoraction").first()
    if moved is None:
        return
    moved.app_label = "ops"
    moved.save(update_fields=["app_label"])
    Permission.objects.using(db).filter(
        content_type__app_label="ops", content_type__model="staffpermissions", codename__in=STAFF_CODENAMES
    ).update(content_type=moved)


class Migration(migrations.Migration):

    dependencies = [
        ('ops', '0002_background_operations'),
        ('orders', '0006_operatoraction'),
        ('contenttypes', '0002_remove_content_type_name'),
        ('auth', '0012_alter_user_first_name_max_length'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='bulkoperationitem',
                    name='operator_action',
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='orders.operatoraction'),
                ),
                migrations.DeleteModel(name='OperatorAction'),
            ],
            database_operations=[],
        ),
        migrations.CreateModel(
            name='StaffPermissions',
            fields=[
                ('id', models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
            ],
            options={
                'permissions': [('operate_saga', 'Can retry, compensate or cancel sagas'), ('work_followups', 'Can resend notifications and resolve follow-ups')],
                'managed': False,
                'default_permissions': (),
            },
        ),
        migrations.RunPython(content_types_forward, content_types_backward),
    ]
