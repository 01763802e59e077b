"""Settings for the loyalty back office.

Everything is read through one django-environ ``env``. With no environment at
all the project runs on the embedded PostgreSQL and Redis that
``scripts/devservices.py`` keeps under ``var/`` (``make run``, ``make test``);
``DATABASE_URL`` and ``REDIS_URL`` point it at real servers instead.
"""

from decimal import Decimal
from pathlib import Path

import environ
from celery.schedules import crontab
from csp.constants import NONCE, NONE, SELF, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

# -----------------------------------------------------------------------------
# Core
# -----------------------------------------------------------------------------
DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set in the environment unless DEBUG=1.")
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production-0123456789abcdef"  # noqa: S105
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
VAR_DIR = Path(env("LOYALTY_VAR_DIR", default=str(BASE_DIR / "var")))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_api_key",
    "django_filters",
    "drf_spectacular",
    "django_celery_beat",
    "csp",
    "loyalty",
    "members",
    "points",
    "campaigns",
    "reports",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "loyalty.urls"
WSGI_APPLICATION = "loyalty.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.i18n",
            ],
        },
    },
]

# -----------------------------------------------------------------------------
# Database: embedded PostgreSQL on a Unix socket in var/run unless DATABASE_URL
# -----------------------------------------------------------------------------
if env("DATABASE_URL", default=""):
    DATABASES = {"default": env.db("DATABASE_URL")}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": env("LOYALTY_DB_NAME", default="loyalty"),
            "USER": "postgres",
            "HOST": str(VAR_DIR / "run"),
        }
    }
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Reporting replica (docs/scaling.md): with REPORTING_DATABASE_URL (a streaming
# replica of the primary), the report pages, exports and API read from it;
# everything else, authorisation included, stays on the primary
# (loyalty.dbrouters). Without it, reports read the primary.
DATABASE_ROUTERS = ["loyalty.dbrouters.PrimaryRouter"]
LOYALTY_REPORTING_DATABASE = "default"
if env("REPORTING_DATABASE_URL", default=""):
    DATABASES["reporting"] = env.db("REPORTING_DATABASE_URL")
    DATABASES["reporting"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
    DATABASES["reporting"]["CONN_HEALTH_CHECKS"] = True
    # Read-only sessions: a write sent to this alias fails even if the URL names the primary.
    DATABASES["reporting"].setdefault("OPTIONS", {}).setdefault("options", "-c default_transaction_read_only=on")
    LOYALTY_REPORTING_DATABASE = "reporting"

# -----------------------------------------------------------------------------
# Redis: Celery broker and the cache (throttling counters)
# -----------------------------------------------------------------------------
_EMBEDDED_REDIS_SOCKET = VAR_DIR / "run" / "redis.sock"
REDIS_URL = env("REDIS_URL", default=f"unix://{_EMBEDDED_REDIS_SOCKET}")
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "loyalty",
        "OPTIONS": {"socket_timeout": 1, "socket_connect_timeout": 1},
    }
}

# -----------------------------------------------------------------------------
# Celery
# -----------------------------------------------------------------------------
_DEFAULT_BROKER = REDIS_URL.replace("unix://", "redis+socket://", 1) if REDIS_URL.startswith("unix://") else REDIS_URL
CELERY_BROKER_URL = env("CELERY_BROKER_URL", default=_DEFAULT_BROKER)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# A broker that is down or unreachable never holds up a till: the services
# queue tasks after commit (the outbox row is already saved, and the sweeps
# send what could not be queued), so a publish gives up after one quick retry
# (a pooled connection gone stale after a Redis restart), and a broker that
# accepts connections but does not answer times out instead of blocking the
# request forever (Redis: kombu's default socket_timeout is None).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "socket_timeout": env.float("CELERY_BROKER_SOCKET_TIMEOUT", default=2.0),
    "socket_connect_timeout": env.float("CELERY_BROKER_SOCKET_TIMEOUT", default=2.0),
}
# Outbox messages and webhook deliveries committed within this many seconds are
# handed to the workers together, from a background thread: the till never
# waits for the broker (loyalty/handoff.py). 0 hands each off at once.
# The till's hot statements run as server-side prepared statements, planned once
# per connection (loyalty/sql.py). Turn off behind a pooler in transaction mode.
LOYALTY_SQL_PREPARE = env.bool("LOYALTY_SQL_PREPARE", default=True)
# The usual purchase at the till (no key, no points paying, no coupons) in one
# statement when nothing sends it to the general path (points/till.py).
LOYALTY_TILL_ONE_STATEMENT = env.bool("LOYALTY_TILL_ONE_STATEMENT", default=True)
LOYALTY_HANDOFF_WINDOW_SECONDS = env.float("LOYALTY_HANDOFF_WINDOW_SECONDS", default=0.2)
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
# A daily or monthly job that finds its lock taken tries again this many
# seconds later instead of being dropped (loyalty.tasks.single_instance_or_retry).
LOYALTY_JOB_BUSY_RETRY_SECONDS = env.int("LOYALTY_JOB_BUSY_RETRY_SECONDS", default=60)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    # Every 30 s: proves beat and a worker are alive (read by /healthz).
    "heartbeat": {"task": "loyalty.tasks.heartbeat", "schedule": 30.0},
    # Every 10 minutes: pending points whose period ended become spendable.
    "points-release-pending": {"task": "points.release_pending", "schedule": 600.0},
    # 00:10 local: expire points due at local midnight.
    "points-expire": {"task": "points.expire_due", "schedule": crontab(hour=0, minute=10)},
    # 01:00 local: tier upgrades and downgrades.
    "points-evaluate-tiers": {"task": "points.evaluate_tiers", "schedule": crontab(hour=1, minute=0)},
    # 03:00 local: verify every ledger invariant (result in /healthz and admin).
    "points-check-ledger": {"task": "points.check_ledger", "schedule": crontab(hour=3, minute=0)},
    # 00:20 local: expire coupons past their validity.
    "coupons-expire": {"task": "campaigns.coupons_expire", "schedule": crontab(hour=0, minute=20)},
    # Every minute: issue queued coupons and retry failed attempts (backoff within 15 minutes).
    "coupons-issue-sweep": {"task": "campaigns.coupon_issue_sweep", "schedule": 60.0},
    # 09:00 local: scheduled campaigns (segment coupon grants, birthday gifts on
    # the month's first run, reactivation waves); each grant is given once.
    "campaigns-run": {"task": "campaigns.run_scheduled", "schedule": crontab(hour=9, minute=0)},
    # 1st of the month, 02:00 local: tier privileges for the new month.
    "tier-privileges-monthly": {
        "task": "campaigns.tier_privileges_monthly",
        "schedule": crontab(day_of_month=1, hour=2, minute=0),
    },
    # 00:50 local: report rollups of the days not built yet (yesterday), the
    # last 2 days again and days changed late (claims, offline receipts).
    "reports-rollups": {"task": "reports.build_rollups", "schedule": crontab(hour=0, minute=50)},
    # 1st of the month, 04:00 local: the previous month's report snapshot.
    "reports-monthly-snapshot": {
        "task": "reports.build_monthly_snapshot",
        "schedule": crontab(day_of_month=1, hour=4, minute=0),
    },
}
# /healthz reports beat unhealthy when its heartbeat is older than this.
LOYALTY_HEARTBEAT_MAX_AGE_SECONDS = env.int("LOYALTY_HEARTBEAT_MAX_AGE_SECONDS", default=180)

# -----------------------------------------------------------------------------
# Auth, i18n, time
# -----------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = env("LANGUAGE_CODE", default="zh-hans")
LANGUAGES = [("zh-hans", _("Simplified Chinese")), ("en", _("English"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = env("TIME_ZONE", default="Asia/Shanghai")
# Beat crontab entries are in local time.
CELERY_TIMEZONE = TIME_ZONE
USE_I18N = True
USE_TZ = True

# Messages live in the session, not a cookie: admin shows one-time API keys in them.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

STATIC_URL = "/static/"
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))

# -----------------------------------------------------------------------------
# Security (production values when DEBUG is off)
# -----------------------------------------------------------------------------
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=not DEBUG)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Content-Security-Policy (django-csp) on every response. Scripts and <style>
# elements run only from this origin or with the per-response nonce
# (``nonce="{{ request.csp_nonce }}"`` in the templates): an injected inline
# script or event handler does not run. ``style`` attributes stay allowed
# (the webhook payload view in admin and plotly.js set a few; they cannot run
# code, and images, the way out for CSS, come from this origin only). The
# report page lets plotly.js add <style> elements (reports/views.py); Swagger
# UI at /api/docs/ adds its CDN (loyalty/urls.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, NONCE],
        "style-src-attr": [UNSAFE_INLINE],
        # data: the console's empty favicon and plotly's image export; blob: plotly's downloads.
        "img-src": [SELF, "data:", "blob:"],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=1024 * 1024)

# -----------------------------------------------------------------------------
# Django REST framework and the OpenAPI schema
# -----------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # DRF's JSON renderer that escapes what UTF-8 cannot encode (an echoed lone surrogate).
    "DEFAULT_RENDERER_CLASSES": ["loyalty.api.renderers.JSONRenderer"],
    # DRF's JSON parser with a nesting limit (deep JSON is a 400, not a RecursionError).
    "DEFAULT_PARSER_CLASSES": ["loyalty.api.parsers.JSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "loyalty.api.exception_handler.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Loyalty back office API",
    "DESCRIPTION": "Terminal (POS), member (mini-program) and operator API, v1.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Errors every operation can answer, and the links between operations (loyalty.api.schema).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "loyalty.api.schema.postprocess_common_errors",
        "loyalty.api.schema.postprocess_links",
    ],
}
API_KEY_CUSTOM_HEADER = "HTTP_AUTHORIZATION"

# -----------------------------------------------------------------------------
# Loyalty programme
# -----------------------------------------------------------------------------
# Member code: TOTP-like step in seconds; accepted for this step plus one of skew.
LOYALTY_MEMBER_CODE_STEP_SECONDS = env.int("LOYALTY_MEMBER_CODE_STEP_SECONDS", default=60)
# A purchase queued offline may carry a code up to this late (paid_at within its window).
LOYALTY_OFFLINE_CODE_DELAY_SECONDS = env.int("LOYALTY_OFFLINE_CODE_DELAY_SECONDS", default=600)
# Failed identifications allowed per terminal per window before 429.
LOYALTY_IDENTIFY_FAILURES_LIMIT = env.int("LOYALTY_IDENTIFY_FAILURES_LIMIT", default=10)
LOYALTY_IDENTIFY_FAILURES_WINDOW_SECONDS = env.int("LOYALTY_IDENTIFY_FAILURES_WINDOW_SECONDS", default=300)
# Failed staff sign-ins (admin, clerk console) allowed per user name and client
# address per window; then even the right password is refused until it ends.
LOYALTY_LOGIN_FAILURES_LIMIT = env.int("LOYALTY_LOGIN_FAILURES_LIMIT", default=5)
LOYALTY_LOGIN_FAILURES_WINDOW_SECONDS = env.int("LOYALTY_LOGIN_FAILURES_WINDOW_SECONDS", default=900)
# Server-side secret mixed into every member code (defaults to SECRET_KEY).
LOYALTY_MEMBER_CODE_SECRET = env("LOYALTY_MEMBER_CODE_SECRET", default=SECRET_KEY)
# Member bearer tokens.
LOYALTY_MEMBER_TOKEN_TTL_DAYS = env.int("LOYALTY_MEMBER_TOKEN_TTL_DAYS", default=30)
# WeChat login: "dev" accepts dev-<openid>; "wechat" calls code2session.
LOYALTY_WECHAT_ADAPTER = env("LOYALTY_WECHAT_ADAPTER", default="dev" if DEBUG else "wechat")
WECHAT_APP_ID = env("WECHAT_APP_ID", default="")
WECHAT_APP_SECRET = env("WECHAT_APP_SECRET", default="")
WECHAT_API_BASE = env("WECHAT_API_BASE", default="https://api.weixin.qq.com")
# Signed WeChat session handed to the client between login and register.
LOYALTY_WECHAT_SESSION_MAX_AGE_SECONDS = env.int("LOYALTY_WECHAT_SESSION_MAX_AGE_SECONDS", default=1800)
# Phone numbers are parsed in this region when given without a country code.
LOYALTY_PHONE_REGION = env("LOYALTY_PHONE_REGION", default="CN")
# Cash value of points: this many points pay 1 CNY.
LOYALTY_POINTS_PER_CNY = env.int("LOYALTY_POINTS_PER_CNY", default=100)
# Points earned per CNY before tier and campaign multipliers.
LOYALTY_POINTS_BASE_RATE = Decimal(env.str("LOYALTY_POINTS_BASE_RATE", default="1"))
# Largest share of a bill that points may pay.
LOYALTY_POINTS_MAX_BILL_SHARE = Decimal(env.str("LOYALTY_POINTS_MAX_BILL_SHARE", default="0.5"))
# Earned points are pending (not spendable) this many days (a chain sets its return window).
LOYALTY_POINTS_PENDING_DAYS = env.int("LOYALTY_POINTS_PENDING_DAYS", default=0)
# Expiry policy: "rolling" (N months after earning, through that day) or
# "year_end" (end of the year after the year earned).
LOYALTY_POINTS_EXPIRY_POLICY = env("LOYALTY_POINTS_EXPIRY_POLICY", default="rolling")
LOYALTY_POINTS_EXPIRY_MONTHS = env.int("LOYALTY_POINTS_EXPIRY_MONTHS", default=12)
# Members per transaction of the expiry job: 500 members (about 1,700 lots at
# bench scale) keep a batch short right after a checkpoint, when every page
# changed is first written whole to the WAL, and while the till is busy
# (docs/performance.md, session 5).
LOYALTY_EXPIRY_BATCH_SIZE = env.int("LOYALTY_EXPIRY_BATCH_SIZE", default=500)
# A receipt recorded without a member can be claimed within this many days.
LOYALTY_CLAIM_WINDOW_DAYS = env.int("LOYALTY_CLAIM_WINDOW_DAYS", default=30)
# A purchase's paid_at may be at most this old (older history goes through import_history).
LOYALTY_PAID_AT_MAX_AGE_DAYS = env.int("LOYALTY_PAID_AT_MAX_AGE_DAYS", default=7)
LOYALTY_PURCHASE_MAX_AMOUNT = Decimal(env.str("LOYALTY_PURCHASE_MAX_AMOUNT", default="1000000"))
# Daily check-in points.
LOYALTY_CHECK_IN_POINTS = env.int("LOYALTY_CHECK_IN_POINTS", default=5)
# Operator adjustments larger than this (absolute points) need a second operator.
LOYALTY_ADJUST_APPROVAL_THRESHOLD = env.int("LOYALTY_ADJUST_APPROVAL_THRESHOLD", default=1000)
# Tier qualification: net spend over this many months.
LOYALTY_TIER_QUALIFICATION_MONTHS = env.int("LOYALTY_TIER_QUALIFICATION_MONTHS", default=12)
# Members per transaction of the tier evaluation job.
LOYALTY_TIER_BATCH_SIZE = env.int("LOYALTY_TIER_BATCH_SIZE", default=20000)

# --- Segments (campaigns.services.segments) ----------------------------------
# Lifecycle stages in local calendar days: new while registered at most NEW_DAYS
# ago; sleeping once the last purchase is SLEEPING_DAYS old; churned at CHURNED_DAYS.
LOYALTY_LIFECYCLE_NEW_DAYS = env.int("LOYALTY_LIFECYCLE_NEW_DAYS", default=30)
LOYALTY_LIFECYCLE_SLEEPING_DAYS = env.int("LOYALTY_LIFECYCLE_SLEEPING_DAYS", default=90)
LOYALTY_LIFECYCLE_CHURNED_DAYS = env.int("LOYALTY_LIFECYCLE_CHURNED_DAYS", default=180)
# RFM scores are quintiles over the net purchases of this many months.
LOYALTY_RFM_MONTHS = env.int("LOYALTY_RFM_MONTHS", default=12)
# 00:40 local: lifecycle stages, RFM scores and groups (after the expiry jobs of 00:10 and 00:20).
CELERY_BEAT_SCHEDULE["segments-compute"] = {
    "task": "campaigns.compute_segments",
    "schedule": crontab(hour=0, minute=40),
}
# --- end of Segments ----------------------------------------------------------

# --- Member messages and webhooks (campaigns.services.notifications, .webhooks) ---
# Channel of new member messages: log (one masked log line each), sms, wechat
# or push (see campaigns.channels).
LOYALTY_MESSAGE_CHANNEL = env("LOYALTY_MESSAGE_CHANNEL", default="log")
# Local hours in which marketing messages are not sent ("22-8", "22:30-08:00";
# "off" to disable): one created then waits until the end.
LOYALTY_QUIET_HOURS = env("LOYALTY_QUIET_HOURS", default="22-8")
# A message is failed after this many attempts (retries after 1, 2, 4, 8, 16 minutes by default).
LOYALTY_MESSAGE_MAX_ATTEMPTS = env.int("LOYALTY_MESSAGE_MAX_ATTEMPTS", default=6)
LOYALTY_MESSAGE_TIMEOUT_SECONDS = env.float("LOYALTY_MESSAGE_TIMEOUT_SECONDS", default=10.0)
# JSON gateways of the sms, wechat and push channels (see campaigns.channels).
LOYALTY_SMS_GATEWAY_URL = env("LOYALTY_SMS_GATEWAY_URL", default="")
LOYALTY_SMS_GATEWAY_KEY = env("LOYALTY_SMS_GATEWAY_KEY", default="")
LOYALTY_WECHAT_MESSAGE_GATEWAY_URL = env("LOYALTY_WECHAT_MESSAGE_GATEWAY_URL", default="")
LOYALTY_WECHAT_MESSAGE_GATEWAY_KEY = env("LOYALTY_WECHAT_MESSAGE_GATEWAY_KEY", default="")
LOYALTY_PUSH_GATEWAY_URL = env("LOYALTY_PUSH_GATEWAY_URL", default="")
LOYALTY_PUSH_GATEWAY_KEY = env("LOYALTY_PUSH_GATEWAY_KEY", default="")
# Outbound webhooks: seconds to wait for an endpoint, attempts before a delivery
# is failed (retries after 1, 2, 4… minutes, at most 6 hours apart: about 20 h in all).
LOYALTY_WEBHOOK_TIMEOUT_SECONDS = env.float("LOYALTY_WEBHOOK_TIMEOUT_SECONDS", default=10.0)
LOYALTY_WEBHOOK_MAX_ATTEMPTS = env.int("LOYALTY_WEBHOOK_MAX_ATTEMPTS", default=12)
CELERY_BEAT_SCHEDULE.update(
    {
        # Every minute: send due messages (retries, quiet hours over, broker outages).
        "outbox-send": {"task": "campaigns.outbox_send_due", "schedule": 60.0},
        # Every minute: post due webhook deliveries (retries, broker outages).
        "webhooks-deliver": {"task": "campaigns.webhooks_deliver_due", "schedule": 60.0},
        # 10:00 local: points expiring in 30 days (warning) and 7 days (last chance).
        "points-expiry-reminders": {
            "task": "campaigns.points_expiry_reminders",
            "schedule": crontab(hour=10, minute=0),
        },
        # 10:05 local: coupons expiring within 3 days, once per coupon.
        "coupons-expiring-reminders": {
            "task": "campaigns.coupons_expiring_reminders",
            "schedule": crontab(hour=10, minute=5),
        },
    }
)
# --- end of Member messages and webhooks ------------------------------------------

# -----------------------------------------------------------------------------
# Logging
# -----------------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
