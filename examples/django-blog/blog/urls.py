from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("posts/<slug:slug>/", views.post_detail, name="post_detail"),
    path("posts/<slug:slug>/comment/", views.comment_form, name="comment_form"),
    path("search/", views.search, name="search"),
]
