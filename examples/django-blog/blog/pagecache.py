"""Django writes its pages to memcached where nginx's rcache looks for them
(BLOG_CACHE_MODE=django-writes, nginx-conf/django-writes.conf).

The key of a page is its path, as `rcache_key $uri;` computes it: the decoded path (no
query string), with control bytes, space and "%" escaped as %XX, like nginx escapes
memcached keys. Django's cache framework would turn "/about/" into ":1:/about/";
`raw_key` is the KEY_FUNCTION that keeps it as it is. The value is the page's bytes (flags
0 with pymemcache), which rcache serves as they are.
"""

import logging

from django.conf import settings
from django.core.cache import cache
from django.utils.cache import cc_delim_re

log = logging.getLogger(__name__)

MAX_KEY_LEN = 250  # memcached's limit; rcache never looks up a longer key


def raw_key(key, key_prefix, version):
    """CACHES KEY_FUNCTION: the key as given, without Django's "<prefix>:<version>:"."""
    return key


def page_key(path):
    """The memcached key rcache looks up for a request whose $uri is `path`."""
    # Only ASCII bytes are escaped, so escaping the characters is the same as escaping
    # the UTF-8 bytes pymemcache sends.
    return "".join(f"%{ord(c):02X}" if c <= " " or c == "%" else c for c in path)


def shared_max_age(response):
    """Seconds a shared cache may keep `response` (s-maxage, else max-age), or None when
    the response says it is private or must not be stored, or says nothing."""
    if not response.has_header("Cache-Control"):
        return None
    directives = {}
    for part in cc_delim_re.split(response["Cache-Control"]):
        name, _, value = part.strip().partition("=")
        directives[name.lower()] = value.strip('"')
    if directives.keys() & {"private", "no-store", "no-cache"}:
        return None
    for name in ("s-maxage", "max-age"):
        if directives.get(name, "").isdigit():
            return int(directives[name]) or None
    return None


def varies_only_by_encoding(response):
    if not response.has_header("Vary"):
        return True
    fields = {f.strip().lower() for f in cc_delim_re.split(response["Vary"])}
    return fields <= {"accept-encoding", ""}


def store_page(request, response):
    """Writes `response` under its page key if it is a page every anonymous visitor of
    this path gets: the same rules as nginx's rcache_store."""
    if (
        request.method != "GET"
        or request.META.get("QUERY_STRING")
        or settings.SESSION_COOKIE_NAME in request.COOKIES
        or response.status_code != 200
        or response.streaming
        or response.cookies  # e.g. the CSRF cookie of a page with a form
        or not varies_only_by_encoding(response)  # the session was used: Vary: Cookie
        or response.has_header("Content-Encoding")
    ):
        return
    seconds = shared_max_age(response)
    if seconds is None:
        return
    key = page_key(request.path)
    if len(key.encode("utf-8")) > MAX_KEY_LEN or "\x7f" in key:  # pymemcache refuses DEL
        return
    try:
        cache.set(key, response.content, timeout=seconds)
    except Exception:  # a cache that fails must not fail the page
        log.exception("cannot store %s in memcached", key)


def delete_pages(paths):
    try:
        cache.delete_many([page_key(p) for p in paths])
    except Exception:
        log.exception("cannot delete %s from memcached", paths)
