"""Settings of the example blog (examples/django-blog).

Everything that differs between a run and the next comes from the environment:

  BLOG_DB              the sqlite file (default: db.sqlite3 next to manage.py)
  BLOG_CACHE_MODE      how pages get into memcached:
                         nginx-stores  (default) nginx writes them (rcache_store); Django
                                       only says how long a page may be cached and sends
                                       PURGE to nginx when it changes; Django itself has no
                                       memcached client (nginx-conf/django-nginx-stores.conf)
                         django-writes Django writes rendered pages through its cache
                                       framework (PyMemcacheCache) and deletes them when
                                       they change (nginx-conf/django-writes.conf)
  RCACHE_PURGE_URL     nginx-stores: where to send PURGE, e.g. http://127.0.0.1:80
  BLOG_MEMCACHED       django-writes: the memcached servers, comma-separated host:port, in
                       the order of the `server` lines of the nginx upstream
  BLOG_CACHE_SECONDS   how long nginx/memcached keep a page (s-maxage; default 300)
  BLOG_REQUEST_LOG     if set, a file where every request Django handles is appended as one
                       line (the tests count them)
  DJANGO_SECRET_KEY, DJANGO_DEBUG, DJANGO_ALLOWED_HOSTS
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "example-only-not-secret-4f1c9d1e0b8a4a2d9e6f7c3b2a1d0e9f"
)
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "blog",
]

BLOG_CACHE_MODE = os.environ.get("BLOG_CACHE_MODE", "nginx-stores")
if BLOG_CACHE_MODE not in ("nginx-stores", "django-writes"):
    raise ValueError(f"BLOG_CACHE_MODE={BLOG_CACHE_MODE!r}: nginx-stores or django-writes")
BLOG_CACHE_SECONDS = int(os.environ.get("BLOG_CACHE_SECONDS", "300"))
BLOG_REQUEST_LOG = os.environ.get("BLOG_REQUEST_LOG", "")
RCACHE_PURGE_URL = os.environ.get("RCACHE_PURGE_URL", "")

MIDDLEWARE = [
    # First, so that it sees the response last: after the session and CSRF middleware
    # have added their cookies and Vary headers (like Django's UpdateCacheMiddleware).
    "blog.middleware.PageCacheMiddleware",
    "blog.middleware.RequestLogMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

if BLOG_CACHE_MODE == "django-writes":
    CACHES = {
        "default": {
            # Django's stock memcached backend: pymemcache's HashClient, which places
            # keys by rendezvous hashing -- `rcache_hash rendezvous` in nginx.
            "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
            "LOCATION": os.environ.get("BLOG_MEMCACHED", "127.0.0.1:11211").split(","),
            # The key in memcached is exactly the page's path (what `rcache_key $uri`
            # computes), with no ":1:" prefix and version.
            "KEY_FUNCTION": "blog.pagecache.raw_key",
            "TIMEOUT": BLOG_CACHE_SECONDS,
            "OPTIONS": {
                # A memcached server that is down must not take the site with it.
                "ignore_exc": True,
                "connect_timeout": 0.5,
                "timeout": 0.5,
            },
        }
    }
else:
    # nginx-stores: Django never talks to memcached. (A local-memory cache, for anything
    # else the site might cache.)
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

ROOT_URLCONF = "blogsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "blogsite.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("BLOG_DB", str(BASE_DIR / "db.sqlite3")),
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"blog": {"handlers": ["console"], "level": "INFO"}},
}
