from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from loyalty.api.floor import floor_view
from loyalty.api.views import api_not_found
from loyalty.health import healthz

api_v1 = [
    path("", include("members.urls")),
    path("", include("points.urls")),
    path("", include("campaigns.urls")),
    path("", include("reports.urls")),
]

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("console/", include("members.console_urls")),
    path("m/", include("members.member_page_urls")),
    path("reports/", include("reports.page_urls")),
    path("api/v1/", include(api_v1)),
    path("api/v1/bench/floor", floor_view),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/<path:rest>", api_not_found),
]
