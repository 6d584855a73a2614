from django.conf import settings
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import add_never_cache_headers, patch_cache_control
from django.views.decorators.cache import cache_control, never_cache
from django.views.decorators.http import require_GET, require_http_methods

from .forms import CommentForm
from .models import Post

# Pages every anonymous visitor gets alike say so: nginx (rcache_store) or the page
# cache middleware keep them for s-maxage; max-age=0 keeps browsers asking again, so a
# visitor who just posted a comment never looks at an old copy of their own.
shared_for = {"max_age": 0, "s_maxage": settings.BLOG_CACHE_SECONDS}


@require_GET
@cache_control(**shared_for)
def index(request):
    posts = Post.objects.annotate(comment_count=Count("comments"))
    return render(request, "blog/index.html", {"posts": posts})


@require_http_methods(["GET", "HEAD", "POST"])
def post_detail(request, slug):
    post = get_object_or_404(Post, slug=slug)
    if request.method == "POST":
        # A comment, posted to the (cached) page's own URL: nginx passes every POST to
        # Django, and the browser drops its own copy of the page.
        form = CommentForm(request.POST)
        if form.is_valid():
            comment = form.save(commit=False)
            comment.post = post
            comment.save()  # signals.comment_changed invalidates the cached pages
            return redirect(post)
        response = render(request, "blog/comment_form.html", {"post": post, "form": form})
        add_never_cache_headers(response)
        return response
    response = render(request, "blog/post_detail.html", {"post": post})
    patch_cache_control(response, **shared_for)
    return response


@require_GET
@never_cache
def comment_form(request, slug):
    """The form, with {% csrf_token %}: it sets the CSRF cookie (and says Vary: Cookie),
    so this page is never cached -- which is why it is not part of the post's page."""
    post = get_object_or_404(Post, slug=slug)
    return render(request, "blog/comment_form.html", {"post": post, "form": CommentForm()})


@require_GET
@never_cache
def search(request):
    q = request.GET.get("q", "").strip()
    posts = Post.objects.filter(Q(title__icontains=q) | Q(body__icontains=q)) if q else []
    return render(request, "blog/search.html", {"q": q, "posts": posts})
