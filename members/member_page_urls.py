"""URLs of the member web page; included by ``loyalty/urls.py`` under ``m/``."""

from django.urls import path

from members.member_page import member_page

urlpatterns = [
    path("", member_page, name="member-page"),
]
