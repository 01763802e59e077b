from django.urls import path

from members import apis

urlpatterns = [
    path("terminal/identify", apis.MemberIdentifyApi.as_view(), name="terminal-identify"),
    path("terminal/members", apis.MemberEnrolApi.as_view(), name="terminal-member-enrol"),
    path("auth/wechat", apis.WechatLoginApi.as_view(), name="auth-wechat"),
    path("auth/register", apis.MemberRegisterApi.as_view(), name="auth-register"),
    path("auth/logout", apis.MemberLogoutApi.as_view(), name="auth-logout"),
    path("me", apis.MeApi.as_view(), name="me"),
    path("me/code", apis.MeCodeApi.as_view(), name="me-code"),
]
