import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from members.errors import WechatLoginFailed
from members.models import Member
from members.wechat import Code2SessionAdapter, DevAdapter, get_adapter

APP_ID = "wx-test-app"
APP_SECRET = "wx-test-secret"


class FakeWechat(BaseHTTPRequestHandler):
    """Plays api.weixin.qq.com's jscode2session: the js_code picks the answer."""

    requests: list[tuple[str, dict[str, list[str]]]] = []

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        type(self).requests.append((url.path, query))
        js_code = query.get("js_code", [""])[0]
        if js_code == "hang-up":
            # Close the connection without any answer.
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if js_code == "server-error":
            self._send(500, b"upstream broke", "text/plain")
        elif js_code == "not-json":
            self._send(200, b"<html>maintenance</html>", "text/html")
        elif js_code == "json-list":
            self._send(200, b"[]", "application/json")
        elif js_code == "no-openid":
            self._send(200, json.dumps({"session_key": "sk"}).encode(), "application/json")
        elif js_code.startswith("bad"):
            body = {"errcode": 40029, "errmsg": "invalid code"}
            self._send(200, json.dumps(body).encode(), "text/plain")
        else:
            body = {"openid": f"o-{js_code}", "session_key": "sk", "unionid": "u-1"}
            self._send(200, json.dumps(body).encode(), "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        return


@pytest.fixture
def fake_wechat(settings) -> Iterator[list[tuple[str, dict[str, list[str]]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeWechat)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    FakeWechat.requests = []
    settings.WECHAT_API_BASE = f"http://127.0.0.1:{server.server_address[1]}/"
    settings.WECHAT_APP_ID = APP_ID
    settings.WECHAT_APP_SECRET = APP_SECRET
    settings.LOYALTY_WECHAT_ADAPTER = "wechat"
    yield FakeWechat.requests
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_adapter_is_chosen_by_setting(settings):
    # when / then
    settings.LOYALTY_WECHAT_ADAPTER = "wechat"
    assert isinstance(get_adapter(), Code2SessionAdapter)
    settings.LOYALTY_WECHAT_ADAPTER = "dev"
    assert isinstance(get_adapter(), DevAdapter)


def test_code2session_returns_openid_and_sends_app_credentials(fake_wechat):
    # when
    openid = Code2SessionAdapter().code_to_openid("081abc")
    # then
    assert openid == "o-081abc"
    assert fake_wechat == [
        (
            "/sns/jscode2session",
            {
                "appid": [APP_ID],
                "secret": [APP_SECRET],
                "js_code": ["081abc"],
                "grant_type": ["authorization_code"],
            },
        )
    ]


def test_code2session_errcode_is_login_failed(fake_wechat):
    # when
    with pytest.raises(WechatLoginFailed) as raised:
        Code2SessionAdapter().code_to_openid("bad-code")
    # then
    assert raised.value.code == "wechat_login_failed"
    assert raised.value.http_status == 401
    assert raised.value.detail == {"errcode": 40029}
    assert raised.value.render_message() == "WeChat login failed: WeChat refused the login code"


@pytest.mark.parametrize("js_code", ["server-error", "not-json", "json-list", "no-openid", "hang-up"])
def test_code2session_misbehaving_server_is_login_failed(fake_wechat, js_code):
    # when / then
    with pytest.raises(WechatLoginFailed):
        Code2SessionAdapter().code_to_openid(js_code)


def test_code2session_unreachable_server_is_login_failed(settings, unused_port):
    # given
    settings.WECHAT_API_BASE = f"http://127.0.0.1:{unused_port}"
    settings.WECHAT_APP_ID = APP_ID
    settings.WECHAT_APP_SECRET = APP_SECRET
    # when
    with pytest.raises(WechatLoginFailed) as raised:
        Code2SessionAdapter().code_to_openid("081abc")
    # then
    assert raised.value.render_message() == "WeChat login failed: WeChat could not be reached"


def test_code2session_without_app_credentials_does_not_call_wechat(fake_wechat, settings):
    # given
    settings.WECHAT_APP_SECRET = ""
    # when
    with pytest.raises(WechatLoginFailed):
        Code2SessionAdapter().code_to_openid("081abc")
    # then
    assert fake_wechat == []


@pytest.mark.django_db
def test_login_api_with_real_adapter_returns_session_then_token(fake_wechat, anon_client):
    # when
    login = anon_client.post("/api/v1/auth/wechat", {"code": "081abc"}, format="json")
    # then
    assert login.status_code == 200, login.content
    assert login.json()["registered"] is False

    # when
    registered = anon_client.post(
        "/api/v1/auth/register",
        {"wechat_session": login.json()["wechat_session"], "phone": "13812345678"},
        format="json",
    )
    again = anon_client.post("/api/v1/auth/wechat", {"code": "081abc"}, format="json")
    # then
    assert registered.status_code == 201, registered.content
    assert Member.objects.get().wechat_openid == "o-081abc"
    assert again.status_code == 200
    assert again.json()["registered"] is True
    assert again.json()["member_no"] == registered.json()["member_no"]


@pytest.mark.django_db
def test_login_api_with_errcode_is_401(fake_wechat, anon_client):
    # when
    response = anon_client.post("/api/v1/auth/wechat", {"code": "bad-code"}, format="json")
    # then
    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "code": "wechat_login_failed",
            "message": "WeChat login failed: WeChat refused the login code",
            "detail": {"errcode": 40029},
        }
    }


@pytest.mark.django_db
def test_login_api_with_unreachable_wechat_is_401(settings, unused_port, anon_client):
    # given
    settings.LOYALTY_WECHAT_ADAPTER = "wechat"
    settings.WECHAT_API_BASE = f"http://127.0.0.1:{unused_port}"
    settings.WECHAT_APP_ID = APP_ID
    settings.WECHAT_APP_SECRET = APP_SECRET
    # when
    response = anon_client.post("/api/v1/auth/wechat", {"code": "081abc"}, format="json")
    # then
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "wechat_login_failed"
    assert Member.objects.count() == 0
