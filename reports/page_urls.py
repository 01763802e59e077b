"""Report pages (under /reports/)."""

urlpatterns: list = []
