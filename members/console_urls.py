"""The clerk console, included at ``console/`` by ``loyalty.urls``."""

from django.urls import path
from django.views.i18n import set_language

from members import console

app_name = "console"

urlpatterns = [
    path("", console.console_home, name="home"),
    path("login/", console.ConsoleLoginView.as_view(), name="login"),
    path("logout/", console.ConsoleLogoutView.as_view(), name="logout"),
    # Chinese or English for this browser (a cookie); the API follows Accept-Language.
    path("language/", set_language, name="language"),
]
