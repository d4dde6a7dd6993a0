"""Per-user daily token quotas, and the "Transcript reviewers" group (view-only admin)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations, models

GROUP = "Transcript reviewers"
# Reading transcripts and usage; no add, change or delete, and nothing of API tokens.
PERMISSIONS = ["view_conversation", "view_message", "view_usersettings"]


def create_reviewers(apps, schema_editor):
    database = schema_editor.connection.alias
    # Permissions are normally created after the last migration has run; this one needs
    # them now, on a fresh database too.
    app_config = apps.get_app_config("chat")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0, using=database)
    app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _created = Group.objects.using(database).get_or_create(name=GROUP)
    group.permissions.add(
        *Permission.objects.using(database).filter(
            content_type__app_label="chat", codename__in=PERMISSIONS
        )
    )


def delete_reviewers(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).filter(name=GROUP).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("chat", "0003_apitoken"),
    ]

    operations = [
        migrations.AddField(
            model_name="usersettings",
            name="daily_token_quota",
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.RunPython(create_reviewers, delete_reviewers),
    ]
