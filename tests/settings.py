"""Test settings: the project's settings with only what tests need changed."""

import os

os.environ.setdefault("SECRET_KEY", "tests-only-secret-key-0123456789abcdefghijklmnopqrstuvwxyz")
os.environ.setdefault("LOYALTY_WECHAT_ADAPTER", "dev")

from loyalty.settings import *  # noqa: E402,F403
from loyalty.settings import CACHES, DATABASES  # noqa: E402

DEBUG = False
SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LANGUAGE_CODE = "en"
# Separate test databases and cache keys per concurrent test run (TEST_DB_SUFFIX).
_SUFFIX = os.environ.get("TEST_DB_SUFFIX", "")
DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}{_SUFFIX}"}
DATABASES["default"]["CONN_MAX_AGE"] = 0
# A second database on the same server, standing in for the reporting replica
# (tests/reports/test_replica_router.py). pytest-django creates it only when a
# collected test lists "reporting" in its databases; reports read "default"
# unless a test sets LOYALTY_REPORTING_DATABASE (whatever REPORTING_DATABASE_URL says).
DATABASES["reporting"] = {
    **{key: value for key, value in DATABASES["default"].items() if key != "TEST"},
    "NAME": f"{DATABASES['default']['NAME']}_reporting",
    "TEST": {"NAME": f"test_{DATABASES['default']['NAME']}_reporting{_SUFFIX}"},
}
LOYALTY_REPORTING_DATABASE = "default"
CACHES["default"]["KEY_PREFIX"] = f"test{_SUFFIX}"
CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = True
LOYALTY_MEMBER_CODE_SECRET = "tests-member-code-secret"
