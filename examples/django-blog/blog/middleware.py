from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed

from .pagecache import store_page


class PageCacheMiddleware:
    """BLOG_CACHE_MODE=django-writes: writes each page an anonymous visitor may share with
    every other one to memcached, where nginx (rcache) serves it from on the next visit.
    First in MIDDLEWARE, so it sees the response after the session and CSRF middleware
    have set their cookies and Vary headers: a page with either is never written."""

    def __init__(self, get_response):
        if settings.BLOG_CACHE_MODE != "django-writes":
            raise MiddlewareNotUsed
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        store_page(request, response)
        return response


class RequestLogMiddleware:
    """With BLOG_REQUEST_LOG set: appends "<method> <path?query> <X-Rcache-Status>" for
    every request Django handles, before it handles it (the tests count them)."""

    def __init__(self, get_response):
        if not settings.BLOG_REQUEST_LOG:
            raise MiddlewareNotUsed
        self.get_response = get_response

    def __call__(self, request):
        line = "{} {} {}\n".format(
            request.method,
            request.get_full_path(),
            request.headers.get("X-Rcache-Status", "-"),
        )
        with open(settings.BLOG_REQUEST_LOG, "a", encoding="utf-8") as log:
            log.write(line)
        return self.get_response(request)
