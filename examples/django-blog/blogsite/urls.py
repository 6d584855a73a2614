from django.contrib import admin
from django.contrib.staticfiles.views import serve as serve_static
from django.urls import include, path, re_path

urlpatterns = [
    path("admin/", admin.site.urls),
    # The admin's CSS and JS, straight from the installed apps so that the example needs
    # no collectstatic. A production site lets nginx serve STATIC_ROOT instead.
    re_path(r"^static/(?P<path>.*)$", serve_static, {"insecure": True}),
    path("", include("blog.urls")),
]
