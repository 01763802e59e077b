from django.urls import path

from points import apis

urlpatterns = [
    path("terminal/purchases", apis.PurchaseCreateApi.as_view(), name="terminal-purchase-create"),
    path("terminal/purchases/preview", apis.PurchasePreviewApi.as_view(), name="terminal-purchase-preview"),
    path(
        "terminal/purchases/<str:receipt_no>/refunds", apis.RefundCreateApi.as_view(), name="terminal-refund-create"
    ),
    path("me/ledger", apis.MeLedgerApi.as_view(), name="me-ledger"),
    path("me/check-in", apis.MeCheckInApi.as_view(), name="me-check-in"),
    path("me/claims", apis.MeClaimApi.as_view(), name="me-claims"),
    path("operator/adjustments", apis.AdjustmentCreateApi.as_view(), name="operator-adjustment-create"),
    path(
        "operator/adjustments/<int:pk>/approve",
        apis.AdjustmentApproveApi.as_view(),
        name="operator-adjustment-approve",
    ),
]
