"""When a post or a comment changes, the cached copies of the pages that show it go.

nginx-stores: one PURGE request per page to nginx (RCACHE_PURGE_URL). With
`rcache_purge soft;` that marks the page stale: the next visitor's request renders it
again while everyone else still gets the old page for that moment, so a comment on a hot
post costs one render, not a stampede. Django has no memcached client in this mode.

django-writes: the page keys are deleted from memcached through Django's cache (the
next visit renders the page and the middleware writes it again).
"""

import http.client
import logging
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.dispatch import receiver
from django.urls import reverse

from .models import Comment, Post
from .pagecache import delete_pages

log = logging.getLogger(__name__)


def purge(path):
    """PURGE `path` on nginx; 200: it was cached, 404: it was not."""
    url = urlsplit(settings.RCACHE_PURGE_URL)
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=2)
    try:
        conn.request("PURGE", path)
        status = conn.getresponse().status
    except OSError as e:
        log.warning("PURGE %s on %s failed: %s", path, settings.RCACHE_PURGE_URL, e)
        return
    finally:
        conn.close()
    if status not in (200, 404):
        log.warning("PURGE %s on %s: HTTP %s", path, settings.RCACHE_PURGE_URL, status)


def invalidate(paths):
    if settings.BLOG_CACHE_MODE == "django-writes":
        delete_pages(paths)
    elif settings.RCACHE_PURGE_URL:
        for path in paths:
            purge(path)


def invalidate_on_commit(paths):
    # After the transaction: the page rendered next must see the change.
    transaction.on_commit(lambda: invalidate(paths))


@receiver(pre_save, sender=Post)
def remember_old_url(sender, instance, **kwargs):
    """A renamed post leaves its old URL behind: remember it, to invalidate it too."""
    old_slug = Post.objects.filter(pk=instance.pk).values_list("slug", flat=True).first()
    instance._old_url = (
        reverse("post_detail", args=[old_slug]) if old_slug not in (None, instance.slug) else None
    )


@receiver(post_save, sender=Post)
@receiver(post_delete, sender=Post)
def post_changed(sender, instance, **kwargs):
    paths = [instance.get_absolute_url(), reverse("index")]
    if getattr(instance, "_old_url", None):
        paths.append(instance._old_url)
    invalidate_on_commit(paths)


@receiver(post_save, sender=Comment)
@receiver(post_delete, sender=Comment)
def comment_changed(sender, instance, **kwargs):
    # The post shows its comments, the front page their number.
    invalidate_on_commit([instance.post.get_absolute_url(), reverse("index")])
