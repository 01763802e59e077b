from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from members.models import Member, Terminal


class IsTerminal(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        return isinstance(request.user, Terminal)


class IsMember(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        return isinstance(request.user, Member)


class IsStaff(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user is not None and getattr(user, "is_staff", False) and user.is_active)
