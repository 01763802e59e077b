from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class LoyaltyConfig(AppConfig):
    name = "loyalty"
    verbose_name = _("System")

    def ready(self) -> None:
        # Registers the OpenAPI security schemes of our authentication classes.
        from django.db.models.signals import post_migrate

        from loyalty.api import schema  # noqa: F401
        from loyalty.roles import roles_sync_after_migrate

        # Keeps the role groups' permissions in step as apps add models.
        post_migrate.connect(roles_sync_after_migrate, dispatch_uid="loyalty.roles_sync")
