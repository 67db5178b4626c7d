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
        if len(password) < 8:
            raise CommandError("Password must be at least 8 characters.")
        staff_user_create(username=username, password=password, role=role, email=email)
        self.stdout.write(f"Staff login: user {username!r} with password {password!r} (role {role})")
