"""API routes of the reports app (under /api/v1/)."""

from django.urls import path

from reports import apis

urlpatterns = [
    path("reports/monthly", apis.ReportMonthlyApi.as_view(), name="reports-monthly"),
]
