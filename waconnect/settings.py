"""waconnect settings, all from the environment (django-environ) with safe defaults.

With no environment at all: DEBUG on, SQLite in ./data, the in-memory channel
layer and the supervisor inside ``runserver`` — zero configuration for a
developer. Production sets DATABASE_URL (PostgreSQL), REDIS_URL, SECRET_KEY,
ALLOWED_HOSTS and WACONNECT_INLINE_SUPERVISOR=off (see README).
"""

from __future__ import annotations

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env") if (BASE_DIR / ".env").exists() else None

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env(
    "SECRET_KEY",
    default="dev-only-insecure-key-change-me" if DEBUG else environ.Env.NOTSET,
)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

DATA_DIR = Path(env("WACONNECT_DATA_DIR", default=str(BASE_DIR / "data")))

INSTALLED_APPS = [
    # sessions_app first: its runserver (supervisor inline) overrides daphne's.
    "sessions_app",
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

if not DEBUG:
    # Production serves collected static files from the app itself (no nginx
    # needed); in development runserver serves them from the finders.
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

ROOT_URLCONF = "waconnect.urls"
ASGI_APPLICATION = "waconnect.asgi.application"

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
                "sessions_app.context_processors.waconnect",
            ],
        },
    },
]

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'waconnect.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Tests use a file too: an in-memory database shares one cache between threads
    # and fails with "table is locked" where a file waits for the lock (as in use).
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test-waconnect.sqlite3")}
    # WAL lets pages read while the supervisor writes; the timeout waits out a
    # writer instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
        }
    )
else:
    # Keep connections: the supervisor talks to the database several times per
    # session event from one thread, and a new connection per call would cost more
    # than the call. No health check before each use (it doubled the supervisor's
    # round trips): a connection the server dropped fails one call, which is then
    # handled (a session handed over, a renewal retried), and Django replaces it.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=300)
    # Tests: a name of their own per run (make test passes one), so two runs on one
    # server do not drop each other's test database.
    if env.str("TEST_DATABASE_NAME", default=""):
        DATABASES["default"]["TEST"] = {"NAME": env.str("TEST_DATABASE_NAME")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env("REDIS_URL", default="")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 gives every socket a 5 s timeout by default, the same
                # 5 s channels-redis blocks in BZPOPMIN waiting for a message: an
                # idle channel would then fail its receive every few seconds
                # (redis-py #4091). Give reads room beyond the blocking pop.
                # redis-py 8 also caps a pool at 100 connections and raises past
                # that: a proxy dropping many sockets at once would fail their
                # group_discard and leave their channels in the groups for a day.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30, "max_connections": 10_000}],
                "capacity": 1000,
                "expiry": 30,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "sessions:list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

SESSION_COOKIE_HTTPONLY = True
# A login lasts 8 hours by default (Django's default is two weeks): these pages
# show QR and pairing codes that link a phone.
SESSION_COOKIE_AGE = env.int("WACONNECT_SESSION_AGE", default=8 * 3600)
SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

# --- waconnect ---------------------------------------------------------------------
WACONNECT_DRIVER = env("WACONNECT_DRIVER", default="neonize")
WACONNECT_INLINE_SUPERVISOR = env.bool("WACONNECT_INLINE_SUPERVISOR", default=True)
WACONNECT_LEASE_TTL = env.float("WACONNECT_LEASE_TTL", default=15.0)
WACONNECT_RENEW_INTERVAL = env.float("WACONNECT_RENEW_INTERVAL", default=5.0)
WACONNECT_SELF_FENCE_MARGIN = env.float("WACONNECT_SELF_FENCE_MARGIN", default=2.0)
WACONNECT_RECONCILE_INTERVAL = env.float("WACONNECT_RECONCILE_INTERVAL", default=10.0)
WACONNECT_MAX_SESSIONS = env.int("WACONNECT_MAX_SESSIONS", default=1000)
WACONNECT_BACKOFF_BASE = env.float("WACONNECT_BACKOFF_BASE", default=1.0)
WACONNECT_BACKOFF_CAP = env.float("WACONNECT_BACKOFF_CAP", default=300.0)
WACONNECT_RECONNECT_WATCH = env.float("WACONNECT_RECONNECT_WATCH", default=60.0)
WACONNECT_NEONIZE_STORE = env("WACONNECT_NEONIZE_STORE", default="")
WACONNECT_WARM_WORKERS = env.int("WACONNECT_WARM_WORKERS", default=2)
WACONNECT_WORKER_HEARTBEAT = env.float("WACONNECT_WORKER_HEARTBEAT", default=2.0)
WACONNECT_WORKER_DEADLINE = env.float("WACONNECT_WORKER_DEADLINE", default=10.0)
WACONNECT_WORKER_ASK_GRACE = env.float("WACONNECT_WORKER_ASK_GRACE", default=1.0)
WACONNECT_WORKER_TERM_GRACE = env.float("WACONNECT_WORKER_TERM_GRACE", default=1.0)
WACONNECT_WORKER_LOG_LEVEL = env("WACONNECT_WORKER_LOG_LEVEL", default="WARNING")
WACONNECT_SIMULATED_TIMING = {
    key: env.float(f"WACONNECT_SIM_{key.upper()}")
    for key in ("connect_delay", "first_qr_ttl", "next_qr_ttl", "pair_delay", "auto_scan")
    if env.str(f"WACONNECT_SIM_{key.upper()}", default="")
} | (
    {"qr_count": env.int("WACONNECT_SIM_QR_COUNT")}
    if env.str("WACONNECT_SIM_QR_COUNT", default="")
    else {}
)

# host:port of `manage.py simulated_whatsapp`: supervisors in several processes then
# share one simulated WhatsApp (tests, demos, benchmarks). Empty: one per process.
WACONNECT_SIM_SERVICE = env("WACONNECT_SIM_SERVICE", default="")
WACONNECT_SIM_KEEPALIVE = env.float("WACONNECT_SIM_KEEPALIVE", default=5.0)

LOG_LEVEL = env("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "sessions_app.logcontext.ContextFilter"},
        "client_errors": {"()": "sessions_app.logfilters.ClientErrorFilter"},
    },
    "formatters": {
        "plain": {
            "format": "%(asctime)s %(levelname)-7s %(name)s [%(context)s] %(message)s",
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["context"],
        },
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "sessions_app": {"level": LOG_LEVEL},
        # Daphne's request log; not also through Django's own "django" console.
        "django.channels.server": {"level": "INFO", "handlers": ["console"], "propagate": False},
        # Django's own "django" console handler (DEBUG only) would print each of its
        # records a second time, bare: they reach the root's console instead.
        "django": {"handlers": [], "level": "INFO"},
        # A 403 or a bad Host: one line, no traceback (sessions_app/logfilters.py).
        **{
            name: {"filters": ["client_errors"]}
            for name in ["django.request"]
            + [
                f"django.security.{kind}"
                for kind in (
                    "DisallowedHost",
                    "DisallowedRedirect",
                    "RequestDataTooBig",
                    "SuspiciousFileOperation",
                    "SuspiciousMultipartForm",
                    "SuspiciousOperation",
                    "SuspiciousSession",
                    "TooManyFieldsSent",
                    "TooManyFilesSent",
                )
            ]
        },
    },
}
