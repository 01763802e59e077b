from django.db import models
from django.utils.translation import gettext_lazy as _


class TimeStampedModel(models.Model):
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        abstract = True


class Heartbeat(models.Model):
    """Last time a periodic job ran, by name: ``beat`` is written every minute
    by a task that beat schedules and a worker runs, so /healthz can tell that
    both are alive."""

    name = models.CharField(_("name"), max_length=64, primary_key=True)
    at = models.DateTimeField(_("at"))
    detail = models.JSONField(_("detail"), default=dict, blank=True)

    class Meta:
        verbose_name = _("heartbeat")
        verbose_name_plural = _("heartbeats")

    def __str__(self) -> str:
        return f"{self.name} @ {self.at:%Y-%m-%d %H:%M:%S}"


class IdempotencyKey(models.Model):
    """A request made with ``Idempotency-Key``: written in the same transaction
    as the change it made, so a retry either finds the stored response or
    finds nothing was done."""

    scope = models.CharField(_("scope"), max_length=64, help_text=_("Who sent it: terminal:<id>, member:<id>…"))
    key = models.CharField(_("key"), max_length=128)
    request_hash = models.CharField(_("request hash"), max_length=64)
    status_code = models.PositiveSmallIntegerField(_("status code"), null=True)
    body = models.BinaryField(_("response body"), null=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = _("idempotency key")
        verbose_name_plural = _("idempotency keys")
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="idempotency_unique_scope_key")]

    def __str__(self) -> str:
        return f"{self.scope}:{self.key}"
