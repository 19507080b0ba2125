"""BIM settings, read from the environment by typed helpers that fail loudly (bim_site/env.py).

Two modes, chosen by the environment alone:
- embedded default (no DATABASE_URL / REDIS_URL): SQLite, the in-memory channel
  layer and Celery in eager mode, so a newcomer's first run needs no services;
- production-like (DATABASE_URL and REDIS_URL set): PostgreSQL via psycopg 3,
  channels-redis and Celery on Redis.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from bim_core.net import parse_networks
from bim_site.env import env_bool, env_int, env_rate, env_required, env_str

# Peer-to-peer jobs, TURN and the user socket (docs/p2p.md) have their own module.
from bim_site.settings_db import databases
from bim_site.settings_p2p import *  # noqa: F403

BASE_DIR = Path(__file__).resolve().parent.parent

# Production mode is explicit, not guessed from DATABASE_URL: the tests, the benchmarks and
# the browser tests' registry run on PostgreSQL with throwaway settings, and a deployment
# that forgets the switch would silently run with the development key. BIM_PRODUCTION=1
# refuses to start without a real secret key and host list, never runs DEBUG, and turns
# on HTTPS-only cookies, HSTS and the SSL redirect (`manage.py check --deploy` is clean).
PRODUCTION = env_bool("BIM_PRODUCTION", False)
DEBUG = env_bool("DEBUG", False)
DEVELOPMENT_SECRET_KEY = "bim-insecure-development-key-change-me"

if PRODUCTION:
    SECRET_KEY = env_required("SECRET_KEY")
    # Django's own bar (check --deploy's W009): long and not a placeholder.
    if len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY == DEVELOPMENT_SECRET_KEY:
        raise ImproperlyConfigured("SECRET_KEY must be at least 50 random characters in production")
    if DEBUG:
        raise ImproperlyConfigured("DEBUG must be off when BIM_PRODUCTION=1")
    ALLOWED_HOSTS = env_required("ALLOWED_HOSTS").split(",")
    CSRF_TRUSTED_ORIGINS = [o for o in env_str("CSRF_TRUSTED_ORIGINS").split(",") if o]
    # Its replacement, BIM_TRUSTED_PROXIES, believes X-Forwarded-Proto from the proxies only;
    # Django's SECURE_PROXY_SSL_HEADER believed it from anyone (bim_site/proxies.py).
    if env_bool("BIM_SECURE_PROXY_SSL_HEADER", False):
        raise ImproperlyConfigured(
            "BIM_SECURE_PROXY_SSL_HEADER is replaced by BIM_TRUSTED_PROXIES (the proxy's address):"
            " X-Forwarded-Proto is believed from those proxies only (docs/deployment.md)"
        )
    SECURE_SSL_REDIRECT = env_bool("BIM_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("BIM_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("BIM_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("BIM_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
else:
    SECRET_KEY = env_str("SECRET_KEY", DEVELOPMENT_SECRET_KEY)
    ALLOWED_HOSTS = env_str("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",")

# Reverse proxies whose X-Forwarded-For and X-Forwarded-Proto are believed (bim_site/proxies.py):
# comma-separated addresses and CIDR blocks. Empty, the default: none, the peer is the client.
try:
    BIM_TRUSTED_PROXIES = parse_networks(env_str("BIM_TRUSTED_PROXIES"))
except ValueError as exc:
    raise ImproperlyConfigured(f"BIM_TRUSTED_PROXIES: {exc}") from None

# /metrics (bim_site/metrics.py): staff sessions, or `Authorization: Bearer BIM_METRICS_TOKEN`
# for a Prometheus scraper; public only where BIM_METRICS_PUBLIC says so (a private network).
BIM_METRICS_TOKEN = env_str("BIM_METRICS_TOKEN")
BIM_METRICS_PUBLIC = env_bool("BIM_METRICS_PUBLIC", False)

# Metrics of every process (docs/monitoring.md): where several processes serve one registry
# (daphne processes, Celery workers), each writes its counters and histograms to files in
# PROMETHEUS_MULTIPROC_DIR and /metrics adds them up. One directory shared by all of them,
# emptied before they start (bim_site/processes.py does both for the processes it runs);
# made here if missing, since prometheus_client writes there from the first metric.
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR")
if PROMETHEUS_MULTIPROC_DIR:
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)

# Content-Security-Policy of every page (bim_site/middleware.py). The contributor page needs
# same-origin module scripts and workers ('self'; blob: for workers onnxruntime-web may start),
# WebAssembly compilation ('wasm-unsafe-eval', not 'unsafe-eval'), same-origin fetches and its
# websocket ('self'); no inline script anywhere (the dashboard's config is a JSON data block,
# the API docs use drf-spectacular's split view). Inline styles stay allowed for admin and
# the Swagger UI. Enforced everywhere, so the browser tests run the contributor page under it
# (BIM_CSP_REPORT_ONLY=1 only reports violations, for trying out a new policy).
CSP_REPORT_ONLY = env_bool("BIM_CSP_REPORT_ONLY", False)
CONTENT_SECURITY_POLICY = env_str(
    "BIM_CONTENT_SECURITY_POLICY",
    "; ".join(
        [
            "default-src 'self'",
            "script-src 'self' 'wasm-unsafe-eval'",
            "worker-src 'self' blob:",
            "connect-src 'self'",
            "img-src 'self' data: blob:",
            "style-src 'self' 'unsafe-inline'",
            "font-src 'self' data:",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    ),
)

INSTALLED_APPS = [
    "daphne",
    "bim_site.apps.BimAdminConfig",  # django.contrib.admin, its index the market dashboard
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
    "channels",
    "axes",
    "subnets",
    "ledger",
    "registry",
    "billing",
    "contributor",
    "developer",
    "bim_site",  # after the apps whose tables it guards (post_migrate)
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "bim_site.middleware.CrossOriginIsolationMiddleware",
    "bim_site.middleware.ContentSecurityPolicyMiddleware",
    # Last before the metrics: turns a lockout raised during authentication into its 429 page.
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "bim_site.urls"
ASGI_APPLICATION = "bim_site.asgi.application"
WSGI_APPLICATION = None

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
            ]
        },
    }
]

# Runtime state (SQLite file, content-addressed chunks, registry key) lives under var/.
VAR_DIR = Path(env_str("BIM_VAR_DIR", str(BASE_DIR / "var")))

DATABASE_URL = env_str("DATABASE_URL")
REDIS_URL = env_str("REDIS_URL")
EMBEDDED = not DATABASE_URL and not REDIS_URL

VAR_DIR.mkdir(parents=True, exist_ok=True)

DATABASES = databases(DATABASE_URL, VAR_DIR)

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            # channels-redis's, less the messages it drops when a socket closes mid-pop.
            "BACKEND": "bim_site.channel_layer.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 times out blocking reads after 5 s, which breaks channels-redis's
                # receive loop and closes idle sockets: no read timeout.
                "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                "prefix": env_str("BIM_CHANNEL_PREFIX", "bim"),
                # Offers beyond a node's queue wait in the database, not in a channel.
                "capacity": 1000,
            },
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_TASK_ALWAYS_EAGER = False
    # Shared by every daphne: the partial text a node streams reaches whichever process
    # serves the user's GET.
    CACHES = {
        "default": {
            "BACKEND": "bim_site.redis_pool.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("BIM_CHANNEL_PREFIX", "bim"),
            # One pool and one client per process, not per cache object (one per request or
            # socket) or per call.
            "OPTIONS": {
                "pool_class": "bim_site.redis_pool.SharedConnectionPool",
                "max_connections": env_int("BIM_REDIS_POOL_MAX", 50),
                "timeout": 20,
            },
        }
    }
else:
    # One process holds the registry, its sockets and its tasks: the in-memory layer
    # reaches every consumer, and eager tasks run where they are queued.
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = "memory://"
    CELERY_TASK_ALWAYS_EAGER = True

CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    "registry-sweep": {"task": "registry.tasks.sweep", "schedule": 5.0},
    "ledger-rollup": {"task": "ledger.tasks.pending_rollup", "schedule": 5.0},
    # The full invariant check reads every account and priced job: minutes apart, not seconds.
    "ledger-check": {"task": "ledger.tasks.invariants_check", "schedule": float(env_int("BIM_LEDGER_CHECK_S", 600))},
    "registry-benchmarks": {"task": "registry.tasks.benchmarks_due", "schedule": 60.0},
    "registry-honeypots": {"task": "registry.tasks.honeypots_issue_due", "schedule": 60.0},
    "registry-sentinels": {"task": "registry.tasks.sentinels_run", "schedule": 300.0},
    "registry-session-keys": {"task": "registry.tasks.session_keys_prune", "schedule": 86400.0},
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Sign-up (contributor.forms.SignUpForm, a UserCreationForm) and password changes apply these.
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": env_int("BIM_PASSWORD_MIN_LENGTH", 10)},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Login lockout (django-axes): after BIM_LOGIN_FAILURE_LIMIT failed logins for one username
# from one address, that pair is refused (429) for BIM_LOGIN_COOLOFF_MINUTES, even with the
# right password. Keyed on the pair, so a stranger cannot lock an owner out from elsewhere.
# Axes's backend comes first: it refuses a locked-out pair before the password is checked,
# and needs the request, which Django's login views and admin pass to authenticate().
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("BIM_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("BIM_LOGIN_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "contributor" / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
# The registry serves /static/ itself (daphne, the demo, the tests) unless a front server does.
SERVE_STATIC = env_bool("BIM_SERVE_STATIC", True)

LOGIN_URL = "contributor:login"
LOGIN_REDIRECT_URL = "contributor:dashboard"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "developer.auth.ApiKeyAuthentication",
        "registry.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "registry.api.exception_handler",
    # Rates in BIM_API_THROTTLE_RATES (bim_site/throttles.py reads them per request).
    "DEFAULT_THROTTLE_CLASSES": ["bim_site.throttles.UserThrottle", "bim_site.throttles.AnonThrottle"],
    # JSON bodies only (the SDK, the node and the pages send nothing else, and the schema then
    # documents one encoding), refusing absurdly nested documents as a 400.
    "DEFAULT_PARSER_CLASSES": ["bim_site.parsers.ApiJSONParser"],
}
# Per authenticated user (session or token) and per anonymous address, in the default cache
# (Redis with REDIS_URL). High by default: the demo, the tests and bench/throughput.py poll
# jobs from one user; a deployment lowers them for its own users.
BIM_API_THROTTLE_RATES = {
    "user": env_rate("BIM_API_RATE_USER", "20000/min"),
    "anon": env_rate("BIM_API_RATE_ANON", "2000/min"),
}
SPECTACULAR_SETTINGS = {
    "TITLE": "BIM registry API",
    "DESCRIPTION": "Submit inference jobs verified by two independent contributors.",
    "VERSION": "1.0.0",
    # Swagger UI from the pinned drf-spectacular-sidecar, served under /static/: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "bim_site.openapi.add_error_responses"],
}

# Content-addressed model chunks (served at immutable URLs) and their fixed size.
ARTIFACT_ROOT = Path(env_str("BIM_ARTIFACT_ROOT", str(VAR_DIR / "artifacts")))
ARTIFACT_CHUNK_SIZE = env_int("BIM_ARTIFACT_CHUNK_SIZE", 1024 * 1024)
# The largest model file an operator may upload in admin (the shipped builds: 2-100 MB).
MODEL_UPLOAD_MAX_BYTES = env_int("BIM_MODEL_UPLOAD_MAX_BYTES", 512 * 1024 * 1024)
# The registry's Ed25519 key that signs receipts; made on first use when absent.
REGISTRY_KEY_PATH = Path(env_str("BIM_REGISTRY_KEY_PATH", str(VAR_DIR / "registry.key")))

# Routing index: dispatchers rebuild their in-memory index of routable nodes when presence
# changes (a version in Redis, or in-process in embedded mode) or when it is this old.
INDEX_KEY_PREFIX = env_str("BIM_INDEX_KEY_PREFIX", "bim:nodeindex")
INDEX_MAX_AGE_S = env_int("BIM_INDEX_MAX_AGE_S", 5)

# On PostgreSQL a ledger posting runs as one call of the bim_ledger_post function (one
# round trip); the ORM path does the same in several statements (SQLite, and tests that
# compare the two).
LEDGER_POST_IN_DATABASE = env_bool("BIM_LEDGER_POST_IN_DATABASE", True)

# Withdrawals below this are refused (1 credit).
LEDGER_MIN_WITHDRAWAL_MICRO = env_int("BIM_MIN_WITHDRAWAL_MICRO", 1_000_000)

# A job whose results are all in is verified and settled where its last result arrived
# (registry/results.py) when that is a comparison, no model pass: it saves a round trip
# through the broker. BIM_VERIFY_IN_PLACE=0 sends every verification to the Celery workers,
# leaving daphne to its sockets.
VERIFY_IN_PLACE = env_bool("BIM_VERIFY_IN_PLACE", True)

# Presence: a node that has not spoken for this long is treated as gone.
NODE_HEARTBEAT_S = env_int("BIM_NODE_HEARTBEAT_S", 10)
NODE_STALE_S = env_int("BIM_NODE_STALE_S", 35)
NODE_HELLO_TIMEOUT_S = env_int("BIM_NODE_HELLO_TIMEOUT_S", 10)
# Node sockets' database work runs on this many threads per registry process
# (registry/node_io.py), each holding a pooled connection for a call only: half the
# database pool by default, the rest staying free for HTTP requests.
NODE_DB_THREADS = env_int("BIM_NODE_DB_THREADS", max(1, env_int("BIM_DB_POOL_MAX", 8) // 2))
# Channel-layer calls node sockets make at once per process (group add and discard):
# below channels-redis's connection pool per event loop (redis-py's 100), which refuses
# rather than waits.
NODE_LAYER_SLOTS = env_int("BIM_NODE_LAYER_SLOTS", 50)
# A node that reconnects within this many seconds of its last heartbeat keeps its open
# assignments (a registry restart is not its fault); after it they go to other nodes.
NODE_RECONNECT_GRACE_S = env_int("BIM_NODE_RECONNECT_GRACE_S", 30)
# `welcome` lists the work a node still holds; a node back this long before an
# assignment's deadline that neither answers nor gives it up is struck for the silence.
NODE_RECONNECT_ANSWER_S = env_int("BIM_NODE_RECONNECT_ANSWER_S", 5)
# The least time an assignment is given before the sweeper re-dispatches its role.
NODE_ASSIGNMENT_MIN_S = env_int("BIM_NODE_ASSIGNMENT_MIN_S", 10)
# Unanswered offers a node may hold per job it runs at once.
NODE_QUEUE_DEPTH = env_int("BIM_NODE_QUEUE_DEPTH", 64)
# Unanswered offers a node without a verified job may hold, doubled per verified job
# (registry.routing_index.probation_offers): a silent newcomer costs users two deadlines.
NODE_PROBATION_OFFERS = env_int("BIM_NODE_PROBATION_OFFERS", 2)
# Verified jobs that vouch for a node: two nodes with fewer are never a job's only pair
# while a vouched node is routable (registry.dispatch._select_vouched_first).
NODE_VOUCHED_JOBS = env_int("BIM_NODE_VOUCHED_JOBS", 3)
# The least registry share of a trusted subnet's jobs, in basis points (subnets.models.Subnet
# .clean): their nodes are the registry's own, so its cut is higher than the 20 % default.
TRUSTED_MIN_REGISTRY_BP = env_int("BIM_TRUSTED_MIN_REGISTRY_BP", 3000)
# Hostile nodes (docs/protocol.md §4.5). Largest websocket message the consumer takes (a
# 384 x 384 image result is 576 KiB of base64); larger closes with 1009. Daphne's own limit
# (--websocket_max_message_size, 1 MiB by default) must be above it, or daphne drops the TCP
# connection without a close frame.
NODE_MAX_MESSAGE_BYTES = env_int("BIM_NODE_MAX_MESSAGE_BYTES", 1024 * 1024 - 1024)
# Per-connection message budget (token bucket): a node streams partials at 10/s per job it
# runs, so the rate leaves room for several jobs at once.
NODE_RATE_PER_S = float(env_int("BIM_NODE_RATE_PER_S", 50))
NODE_RATE_BURST = float(env_int("BIM_NODE_RATE_BURST", 200))
# Tokens a heartbeat costs (half a second of the default budget): honest nodes send one
# every BIM_NODE_HEARTBEAT_S, a heartbeat flood runs out of budget within seconds.
NODE_HEARTBEAT_COST = env_int("BIM_NODE_HEARTBEAT_COST", 25)
# A node cut off for a flood or an oversized frame may not say hello again for this long.
NODE_CUT_OFF_COOL_OFF_S = env_int("BIM_NODE_CUT_OFF_COOL_OFF_S", 30)
# Heartbeats update presence in the cache; the node's row gets last_seen at most this often.
NODE_LAST_SEEN_DB_INTERVAL_S = env_int("BIM_NODE_LAST_SEEN_DB_INTERVAL_S", 300)
# Certified session keys are remembered this long (refusing reuse); older ones are pruned daily.
SESSION_KEY_RETENTION_DAYS = env_int("BIM_SESSION_KEY_RETENTION_DAYS", 30)
# A benchmark's reported run times may not add up to less than the registry observed
# (issue to answer, its own clock) minus this allowance for transport; less is clamped up.
NODE_BENCHMARK_TRANSPORT_MS = env_int("BIM_NODE_BENCHMARK_TRANSPORT_MS", 50)
# Weight of the latest job in a node's observed speed (exponentially weighted average).
NODE_SPEED_EWMA_ALPHA = 0.2

# Keys a websocket's ?token= may carry besides DRF tokens: a function each, key -> user or None
# (the developer app's API keys, what SDK users hold).
SOCKET_KEY_RESOLVERS = ["developer.keys.api_key_user"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "bim": {"handlers": ["console"], "level": env_str("BIM_LOG_LEVEL", "INFO")},
        "django": {"handlers": ["console"], "level": "WARNING"},
    },
}

# Self-serve credits (billing/). What a credit is worth: BIM_MICRO_PER_MINOR_UNIT
# micro-credits per minor unit of BIM_CURRENCY (1,000,000: one credit per cent).
BIM_TRIAL_GRANT_MICRO = env_int("BIM_TRIAL_GRANT_MICRO", 5_000_000)
BIM_CURRENCY = os.environ.get("BIM_CURRENCY", "usd")
BIM_MICRO_PER_MINOR_UNIT = env_int("BIM_MICRO_PER_MINOR_UNIT", 1_000_000)
# Stripe Checkout and its webhook (billing/payments.py); payments are off without both keys.
STRIPE_SECRET_KEY = os.environ.get("STRIPE_SECRET_KEY", "")
STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE", "")  # tests point it at a loopback fake
# The OpenAI-compatible API (developer/openai_api.py) waits this long for a verified result,
# then answers 504 `job_pending` with the job to poll.
BIM_OPENAI_WAIT_S = env_int("BIM_OPENAI_WAIT_S", 60)
# Retry-After on 503 answers (no node connected for the subnet).
BIM_RETRY_AFTER_S = env_int("BIM_RETRY_AFTER_S", 30)
