from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from blog.models import Comment, Post

POSTS = [
    (
        "Fast caching with Django and nginx",
        "fast-caching-with-django-and-nginx",
        "Django writes every page to memcached; nginx serves it from there.\n\n"
        "The app only sees misses, logged-in users and comments.",
        [("Ann", "Does it survive being slashdotted?")],
    ),
    (
        "Keep-alive to memcached",
        "keep-alive-to-memcached",
        "A new TCP connection per request is what the stock module does.",
        [],
    ),
    (
        "Logged-in users",
        "logged-in-users",
        "A session cookie means the cached page is never shown.",
        [("Bob", "No more admin sub-domain."), ("Cy", "Nice.")],
    ),
]


class Command(BaseCommand):
    help = "Creates the sample posts and comments, and an admin user (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--admin-user", default="admin")
        parser.add_argument("--admin-password", default="rcache-demo")

    def handle(self, *args, admin_user, admin_password, **options):
        User = get_user_model()
        user = User.objects.filter(username=admin_user).first()
        if user is None:
            User.objects.create_superuser(admin_user, f"{admin_user}@example.com", admin_password)
        else:
            user.set_password(admin_password)
            user.save()
        for title, slug, body, comments in POSTS:
            post, created = Post.objects.get_or_create(
                slug=slug, defaults={"title": title, "body": body}
            )
            if created:
                for name, text in comments:
                    Comment.objects.create(post=post, name=name, body=text)
        self.stdout.write(
            f"{Post.objects.count()} posts, {Comment.objects.count()} comments; "
            f"admin user {admin_user!r} with password {admin_password!r}"
        )
