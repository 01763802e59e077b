"""Report pages (under /reports/): the monthly KPI dashboard and its exports."""

from django.urls import path
from django.views.i18n import set_language

from reports import views

app_name = "report_pages"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    # /reports/export/trend.csv?month=2025-03&store=SH001&tier=gold
    path("export/<slug:table>.<slug:fmt>", views.export, name="export"),
    path("plotly.min.js", views.plotly_js, name="plotly_js"),
    # Chinese or English for this browser (a cookie).
    path("language/", set_language, name="language"),
]
