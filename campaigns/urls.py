from django.urls import path

from campaigns import apis

urlpatterns = [
    path("benefits", apis.BenefitListApi.as_view(), name="benefit-list"),
    path("benefits/<int:pk>/exchange", apis.BenefitExchangeApi.as_view(), name="benefit-exchange"),
    path("me/coupons", apis.MeCouponListApi.as_view(), name="me-coupons"),
    path("terminal/coupons/<str:code>/write-off", apis.CouponWriteOffApi.as_view(), name="terminal-coupon-write-off"),
]
