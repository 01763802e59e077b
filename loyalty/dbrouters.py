"""Which database a query goes to: the primary (``default``) for everything,
and the reporting replica (``reporting``) only where a report asks for it
by name.

With ``REPORTING_DATABASE_URL`` set (``loyalty/settings.py``), ``DATABASES``
has a ``reporting`` alias, a read-only streaming replica of the primary, and
``reporting_alias()`` names it; without it, ``reporting_alias()`` is
``default`` and nothing changes. The report read paths (``reports.apis``,
``reports.views``, ``reports.exports``) pass ``using=reporting_alias()`` to
``reports.selectors`` explicitly; nothing else reads the replica. In
particular authentication and authorisation (sessions, users, groups and
permissions, staff profiles, terminal API keys, member tokens), every write,
the till and member APIs, idempotency keys and the jobs that build the
rollups and snapshots always use the primary: a replica lags, and a key
revoked or a permission withdrawn on the primary must take effect at once.

``PrimaryRouter`` makes these rules hold where code does not name a database:

* writes always go to the primary, even for an object read from the replica;
* credentials and permissions are always read from the primary, even through
  a relation of an object read from the replica;
* other reads follow the object they start from (Django's default: a
  related object of a replica row comes from the replica, so a report stays
  on one database), else the primary;
* migrations run on the primary only: the replica gets the schema by
  replication.

An explicit ``.using()`` is not routed: only report selectors use it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS
from django.db.models import Model

REPORTING = "reporting"

# Who may do what, and what was already done: read from the primary whatever
# the hints say (``app_label`` or ``app_label.model_name``, lower case).
PRIMARY_ONLY_APPS = frozenset({"auth", "sessions", "contenttypes", "admin"})
PRIMARY_ONLY_MODELS = frozenset(
    {
        "members.terminal",
        "members.terminalapikey",
        "members.membertoken",
        "members.staffprofile",
        "loyalty.idempotencykey",
    }
)


def reporting_alias() -> str:
    """The database alias the report pages, exports and API read from:
    ``reporting`` when a replica is configured, else ``default``."""
    return settings.LOYALTY_REPORTING_DATABASE


def primary_only(model: type[Model]) -> bool:
    return model._meta.app_label in PRIMARY_ONLY_APPS or model._meta.label_lower in PRIMARY_ONLY_MODELS


class PrimaryRouter:
    """See the module docstring."""

    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        if primary_only(model):
            return DEFAULT_DB_ALIAS
        # None: the database of the instance hinted at (a relation), else default.
        return None

    def db_for_write(self, model: type[Model], **hints: Any) -> str | None:
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        # The replica holds the primary's rows: an object of one may point to one of the other.
        if {obj1._state.db, obj2._state.db} <= {DEFAULT_DB_ALIAS, REPORTING}:
            return True
        return None

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool | None:
        return db == DEFAULT_DB_ALIAS
