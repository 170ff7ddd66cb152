"""waconnect settings, all from the environment (django-environ) with safe defaults.

With no environment at all: DEBUG on, SQLite in ./data, the in-memory channel
layer and the supervisor inside ``runserver`` — zero configuration for a
developer. Production sets DATABASE_URL (PostgreSQL), REDIS_URL, SECRET_KEY,
ALLOWED_HOSTS and WACONNECT_INLINE_SUPERVISOR=off (see README).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import environ
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env") if (BASE_DIR / ".env").exists() else None

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env(
    "SECRET_KEY",
    default="dev-only-insecure-key-change-me" if DEBUG else environ.Env.NOTSET,
)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
# Origins a browser may POST from. In production the site is served over HTTPS
# (behind a TLS proxy), so by default https:// for every allowed host ("." hosts
# as "*." wildcards); set CSRF_TRUSTED_ORIGINS when the public address differs.
CSRF_TRUSTED_ORIGINS = env.list(
    "CSRF_TRUSTED_ORIGINS",
    default=[]
    if DEBUG
    else [f"https://{'*' if h.startswith('.') else ''}{h}" for h in ALLOWED_HOSTS if h != "*"],
)

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
    "servestatic",  # its configuration checks
    "django.contrib.staticfiles",
    "channels",
    "ops",
    "axes",
    "csp",
    # The HTTP API (/api/v1/); ninja listed so its docs use its own static files.
    "ninja",
    "api",
    # Messages in and out of sessions: the outbound queue and the inbound store.
    "messaging",
    # Durable webhooks: endpoints, the outbox, deliveries (delivered by the supervisors).
    "webhooks",
]

MIDDLEWARE = [
    # Django's and django-csp's middleware as subclasses that run on the event loop
    # under ASGI (waconnect/middleware.py): each of their steps was a thread hop,
    # fifteen per request. Same classes, same behaviour under WSGI.
    "waconnect.middleware.SecurityMiddleware",
    # Static files come from the app itself in every mode (no nginx needed): in
    # production the collected, hashed files; with DEBUG on straight from the
    # finders (SERVESTATIC_USE_FINDERS), so plain `daphne` serves them too.
    # ServeStatic (WhiteNoise's async fork), not WhiteNoise: one sync-only
    # middleware makes Django run every async view (the API's long poll) through
    # async_to_sync in a thread of its own, off the channel layer's event loop.
    "servestatic.middleware.ServeStaticMiddleware",
    "django_permissions_policy.PermissionsPolicyMiddleware",
    "waconnect.middleware.CSPMiddleware",
    "waconnect.middleware.SessionMiddleware",
    "waconnect.middleware.CommonMiddleware",
    "waconnect.middleware.CsrfViewMiddleware",
    "waconnect.middleware.AuthenticationMiddleware",
    "waconnect.middleware.MessageMiddleware",
    "waconnect.middleware.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a lockout into its 429 answer.
    "axes.middleware.AxesMiddleware",
]
SERVESTATIC_USE_FINDERS = DEBUG
SERVESTATIC_AUTOREFRESH = DEBUG

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
    # Private from the start (sessions_app.datafiles makes it 700 at every start too).
    Path(DATABASES["default"]["NAME"]).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
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
    # A bounded pool per process (psycopg-pool through Django), no persistent
    # connections: under ASGI every request runs in a thread of its own, and a
    # connection kept per thread (CONN_MAX_AGE) outlived its thread: 800 requests
    # left 64 idle connections, and a full server stops the supervisors' renewals.
    # Each database call borrows a connection and gives it back (no new TCP
    # connection: the pool keeps them open), the supervisor's two database threads
    # included; Django allows a pool only with CONN_MAX_AGE 0, for every thread of
    # the process, since they share one settings dict. No health check on borrow
    # (it doubled the supervisor's round trips): a connection the server dropped
    # fails one call, which is then handled (a session handed over, a renewal
    # retried), and the pool discards it.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("WACONNECT_DB_POOL_MIN", default=2),
        # A supervisor's threads can hold 10 at once (waconnect.checks.database_pool_size).
        "max_size": env.int("WACONNECT_DB_POOL_MAX", default=12),
        # Seconds a call waits for a free connection before it fails.
        "timeout": env.float("WACONNECT_DB_POOL_TIMEOUT", default=10.0),
    }
    # A partition (the server unreachable, nothing answering) must not hang a
    # thread for the kernel's retransmission timeout (~15 min, and up to 2 min
    # after the network is back): libpq gives up on a connect after 5 s, on a
    # sent statement left unacknowledged for 10 s (tcp_user_timeout) and on an
    # idle connection whose peer is gone after about 25 s (keep-alives); Django
    # then opens a new one. The supervisor does not rely on this to stay safe:
    # it fences itself on its own clock. Query parameters of DATABASE_URL win.
    for option, value in {
        "connect_timeout": 5,
        "tcp_user_timeout": 10_000,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }.items():
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault(option, value)
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

# django-axes first: it refuses a locked-out login before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Login throttling (the site's login and the admin's): after AXES_FAILURE_LIMIT
# failures for one username from one address, that pair is refused (429) for the
# cool-off, the right password included. Counted per username *and* address, so a
# stranger cannot lock an operator out from elsewhere. Behind a proxy the address
# is the client's only with Daphne's --proxy-headers (REMOTE_ADDR). Each failure is
# logged in one line with the username and address, never the password
# ("axes.handlers.database"; `manage.py axes_reset` unlocks everyone).
AXES_FAILURE_LIMIT = env.int("WACONNECT_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("WACONNECT_LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# Log the username and the address (axes masks them by default); the password is
# always masked, in the log and in the attempts it stores.
AXES_SENSITIVE_PARAMETERS: list[str] = []

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
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "servestatic.storage.CompressedManifestStaticFilesStorage"
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

# --- transport: production defaults when DEBUG is off (README, "Behind a TLS proxy")
# Daphne speaks plain HTTP; TLS ends at a proxy that says so in X-Forwarded-Proto
# (and Daphne's --proxy-headers turns X-Forwarded-For into the client's address).
# Trust that header only where the proxy is the only way in.
if env.bool("BEHIND_TLS_PROXY", default=not DEBUG):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# Probes and scrapers speak plain HTTP to the process itself: a redirect would hide
# a 503 from a load balancer (it follows or counts the 301) and break Prometheus.
SECURE_REDIRECT_EXEMPT = [r"^(metrics|healthz|readyz)$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
# Asking browsers' preload list for the domain is the domain owner's decision, not
# a default: without it Django's deploy check warns (W021), so that one warning is
# silenced unless preload is asked for.
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
# Django's deploy checks look for three middleware by their exact paths; the
# on-loop subclasses stand in for them (waconnect/checks.py runs those checks
# again with each subclass as its parent, and names a missing one waconnect.W00x).
SILENCED_SYSTEM_CHECKS += ["security.W001", "security.W002", "security.W003"]

# Content-Security-Policy in every mode (tests and development too, so an inline
# script or style is caught where it is written): the pages load only their own
# scripts and styles, talk to their own WebSocket, and show the QR code as inline
# SVG markup; the favicon is a data: URL.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}
# Browser features the pages never use, turned off for them and anything they embed.
PERMISSIONS_POLICY: dict[str, list[str]] = {
    feature: []
    for feature in (
        "accelerometer",
        "camera",
        "display-capture",
        "geolocation",
        "gyroscope",
        "magnetometer",
        "microphone",
        "payment",
        "usb",
    )
}

# --- waconnect ---------------------------------------------------------------------
WACONNECT_DRIVER = env("WACONNECT_DRIVER", default="neonize")
WACONNECT_INLINE_SUPERVISOR = env.bool("WACONNECT_INLINE_SUPERVISOR", default=True)
WACONNECT_LEASE_TTL = env.float("WACONNECT_LEASE_TTL", default=15.0)
WACONNECT_RENEW_INTERVAL = env.float("WACONNECT_RENEW_INTERVAL", default=5.0)
WACONNECT_SELF_FENCE_MARGIN = env.float("WACONNECT_SELF_FENCE_MARGIN", default=2.0)
WACONNECT_RECONCILE_INTERVAL = env.float("WACONNECT_RECONCILE_INTERVAL", default=10.0)
WACONNECT_STOP_GRACE = env.float("WACONNECT_STOP_GRACE", default=25.0)
WACONNECT_MAX_SESSIONS = env.int("WACONNECT_MAX_SESSIONS", default=1000)
WACONNECT_BACKOFF_BASE = env.float("WACONNECT_BACKOFF_BASE", default=1.0)
WACONNECT_BACKOFF_CAP = env.float("WACONNECT_BACKOFF_CAP", default=300.0)
WACONNECT_RECONNECT_WATCH = env.float("WACONNECT_RECONNECT_WATCH", default=60.0)
WACONNECT_CONNECT_LIMIT = env.int("WACONNECT_CONNECT_LIMIT", default=10)
WACONNECT_QR_ROUND_LIMIT = env.float("WACONNECT_QR_ROUND_LIMIT", default=160.0)
WACONNECT_NEONIZE_STORE = env("WACONNECT_NEONIZE_STORE", default="")
WACONNECT_WARM_WORKERS = env.int("WACONNECT_WARM_WORKERS", default=2)
WACONNECT_WORKER_HEARTBEAT = env.float("WACONNECT_WORKER_HEARTBEAT", default=2.0)
WACONNECT_WORKER_DEADLINE = env.float("WACONNECT_WORKER_DEADLINE", default=6.0)
WACONNECT_WORKER_ASK_GRACE = env.float("WACONNECT_WORKER_ASK_GRACE", default=1.0)
WACONNECT_WORKER_TERM_GRACE = env.float("WACONNECT_WORKER_TERM_GRACE", default=1.0)
WACONNECT_WORKER_LOG_LEVEL = env("WACONNECT_WORKER_LOG_LEVEL", default="WARNING")
WACONNECT_SIMULATED_TIMING = (
    {
        key: env.float(f"WACONNECT_SIM_{key.upper()}")
        for key in (
            "connect_delay",
            "first_qr_ttl",
            "next_qr_ttl",
            "pair_delay",
            "auto_scan",
            "ack_delay",
            "delivered_delay",
            "read_delay",
        )
        if env.str(f"WACONNECT_SIM_{key.upper()}", default="")
    }
    | (
        {"qr_count": env.int("WACONNECT_SIM_QR_COUNT")}
        if env.str("WACONNECT_SIM_QR_COUNT", default="")
        else {}
    )
    | (
        # Peers' numbers that exist on the simulated WhatsApp ("*": every number).
        {"peers": tuple(env.list("WACONNECT_SIM_PEERS"))}
        if env.str("WACONNECT_SIM_PEERS", default="")
        else {}
    )
)
# Seconds a send may wait for WhatsApp's ack before its outcome is unknown.
WACONNECT_SEND_TIMEOUT = env.float("WACONNECT_SEND_TIMEOUT", default=20.0)

# host:port of `manage.py simulated_whatsapp`: supervisors in several processes then
# share one simulated WhatsApp (tests, demos, benchmarks). Empty: one per process.
WACONNECT_SIM_SERVICE = env("WACONNECT_SIM_SERVICE", default="")
WACONNECT_SIM_KEEPALIVE = env.float("WACONNECT_SIM_KEEPALIVE", default=5.0)
# The service drops a client silent this long; below lease TTL − self-fence margin.
WACONNECT_SIM_CLIENT_TIMEOUT = env.float("WACONNECT_SIM_CLIENT_TIMEOUT", default=8.0)

# Who may read /metrics without a token (CIDRs; see ops/auth.py).
WACONNECT_METRICS_ALLOW = env.list("WACONNECT_METRICS_ALLOW", default=["127.0.0.0/8", "::1/128"])
WACONNECT_METRICS_TOKEN_VERIFIER = env("WACONNECT_METRICS_TOKEN_VERIFIER", default="")

# The HTTP API: requests per token (ninja throttle syntax, per process) and the
# longest a long poll is held open.
WACONNECT_API_RATE = env("WACONNECT_API_RATE", default="600/m")
WACONNECT_API_MAX_WAIT = env.float("WACONNECT_API_MAX_WAIT", default=30.0)

# Webhooks (webhooks/conf.py, docs/webhooks.md). Receivers on loopback, private or
# link-local addresses are refused unless allowed (on with DEBUG: development).
WACONNECT_WEBHOOKS_ALLOW_PRIVATE = env.bool("WACONNECT_WEBHOOKS_ALLOW_PRIVATE", default=DEBUG)
if env.str("WACONNECT_WEBHOOKS_SCHEDULE", default=""):
    # Seconds before each attempt, comma-separated: "0,5,300,1800,7200,18000,36000,36000".
    WACONNECT_WEBHOOKS_SCHEDULE = [float(s) for s in env.list("WACONNECT_WEBHOOKS_SCHEDULE")]
# Seconds: connect and total per attempt, a claim's lease, the periodic sweep, how
# long an endpoint may only fail before it is disabled, a rotation's overlap.
WACONNECT_WEBHOOKS_CONNECT_TIMEOUT = env.float("WACONNECT_WEBHOOKS_CONNECT_TIMEOUT", default=5.0)
WACONNECT_WEBHOOKS_TOTAL_TIMEOUT = env.float("WACONNECT_WEBHOOKS_TOTAL_TIMEOUT", default=15.0)
WACONNECT_WEBHOOKS_CLAIM_TTL = env.float("WACONNECT_WEBHOOKS_CLAIM_TTL", default=60.0)
WACONNECT_WEBHOOKS_SWEEP_INTERVAL = env.float("WACONNECT_WEBHOOKS_SWEEP_INTERVAL", default=10.0)
WACONNECT_WEBHOOKS_DISABLE_AFTER = env.float("WACONNECT_WEBHOOKS_DISABLE_AFTER", default=432_000.0)
WACONNECT_WEBHOOKS_ROTATION_OVERLAP = env.float(
    "WACONNECT_WEBHOOKS_ROTATION_OVERLAP", default=86_400.0
)
WACONNECT_WEBHOOKS_MAX_IN_FLIGHT = env.int("WACONNECT_WEBHOOKS_MAX_IN_FLIGHT", default=64)

# Messages (messaging/conf.py): seconds between two sends of a session (WhatsApp
# bans bursts; 0 turns pacing off), and how long a queued message waits for its
# session before it expires (a request may give its own deadline).
WACONNECT_SEND_INTERVAL = env.float("WACONNECT_SEND_INTERVAL", default=1.0)
WACONNECT_MESSAGE_TTL = env.float("WACONNECT_MESSAGE_TTL", default=3600.0)
# PostgreSQL: database threads (pooled connections) of a supervisor's message pumps,
# and of its session work (several: a takeover's writes overlap; sessions_app/dbthread.py).
WACONNECT_MESSAGE_DB_THREADS = env.int("WACONNECT_MESSAGE_DB_THREADS", default=4)
WACONNECT_SUPERVISOR_DB_THREADS = env.int("WACONNECT_SUPERVISOR_DB_THREADS", default=3)

LOG_LEVEL = env("LOG_LEVEL", default="INFO")
# "plain" for people, "json" (one object per line) for log shippers.
LOG_FORMAT = env("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'plain' or 'json', not {LOG_FORMAT!r}")
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
        "json": {"()": "ops.jsonlog.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["context"],
        },
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "sessions_app": {"level": LOG_LEVEL},
        "ops": {"level": LOG_LEVEL},
        "webhooks": {"level": LOG_LEVEL},
        # Daphne's request log; not also through Django's own "django" console.
        "django.channels.server": {"level": "INFO", "handlers": ["console"], "propagate": False},
        # django-axes: its one WARNING line per failed login (username, address) is
        # kept; its INFO chatter ("running database handler ...") is not.
        "axes": {"level": "WARNING"},
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
