from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from ops.roles import ROLES, staff_user_create


class Command(BaseCommand):
    help = "Create (or update) a staff user with a role: viewer, support, operator or admin."

    def add_arguments(self, parser):
        parser.add_argument("--username", required=True)
        parser.add_argument("--password", required=True)
        parser.add_argument("--role", required=True, choices=ROLES)
        parser.add_argument("--email", default="")

    def handle(self, *args, username, password, role, email, **options):
        try:
            validate_password(password, user=get_user_model()(username=username, email=email))
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        staff_user_create(username=username, password=password, role=role, email=email)
        self.stdout.write(f"Staff login: user {username!r} with password {password!r} (role {role})")
