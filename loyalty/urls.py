from csp.constants import SELF, UNSAFE_INLINE
from csp.decorators import csp_replace, csp_update
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from loyalty.api.floor import floor_view
from loyalty.api.views import api_not_found
from loyalty.health import healthz

api_v1 = [
    path("", include("members.urls")),
    path("", include("points.urls")),
    path("", include("campaigns.urls")),
    path("", include("reports.urls")),
]

# Swagger UI comes from its CDN and its page has an inline <style>: that page
# alone allows them. Its start-up script is served from the same URL
# (?script), not inline, so scripts stay limited to this origin and the CDN.
SWAGGER_CDN = "https://cdn.jsdelivr.net"
api_docs = csp_update({"script-src": [SWAGGER_CDN], "img-src": [SWAGGER_CDN]})(
    csp_replace({"style-src": [SELF, SWAGGER_CDN, UNSAFE_INLINE]})(
        SpectacularSwaggerSplitView.as_view(url_name="schema")
    )
)

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("console/", include("members.console_urls")),
    path("m/", include("members.member_page_urls")),
    path("reports/", include("reports.page_urls")),
    path("api/v1/", include(api_v1)),
    path("api/v1/bench/floor", floor_view),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", api_docs, name="api-docs"),
    path("api/<path:rest>", api_not_found),
]
