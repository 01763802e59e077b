import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

TERMINAL_PATHS = {"/api/v1/terminal/identify", "/api/v1/terminal/members"}
MEMBER_PATHS = {"/api/v1/auth/wechat", "/api/v1/auth/register", "/api/v1/me", "/api/v1/me/code"}


@pytest.fixture
def schema(anon_client):
    response = anon_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200, response.content
    return response.json()


def test_schema_is_an_openapi_document_with_terminal_and_member_paths(schema):
    # then
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["version"] == "1.0.0"
    assert set(schema["paths"]) >= TERMINAL_PATHS | MEMBER_PATHS


def test_schema_declares_auth_schemes_and_error_envelope(schema):
    # then
    schemes = schema["components"]["securitySchemes"]
    assert schemes["TerminalApiKey"]["type"] == "apiKey"
    assert schemes["MemberToken"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Member token from /api/v1/auth/wechat.",
    }
    identify = schema["paths"]["/api/v1/terminal/identify"]["post"]
    assert identify["security"] == [{"TerminalApiKey": []}, {"ClerkSession": []}]
    assert {"200", "400", "401", "404", "410", "429"} <= set(identify["responses"])
    assert schema["paths"]["/api/v1/me"]["get"]["security"] == [{"MemberToken": []}]
    error_body = schema["components"]["schemas"]["ErrorBody"]
    assert set(error_body["properties"]) == {"code", "message", "detail"}


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/api/v1/terminal/identify", {"code"}),
        ("/api/v1/terminal/members", {"phone", "name", "birthday", "gender", "marketing_consent", "referral_code"}),
        ("/api/v1/auth/wechat", {"code"}),
        (
            "/api/v1/auth/register",
            {"wechat_session", "phone", "name", "birthday", "gender", "marketing_consent", "referral_code"},
        ),
    ],
)
def test_schema_request_body_of_each_operation_is_its_own(schema, path, fields):
    # given
    ref = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    # when
    component = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]
    # then
    assert set(component["properties"]) == fields


def test_schema_types_money_as_decimal_strings(schema):
    # then the contract says strings, and the API renders strings
    tier = schema["components"]["schemas"]["TierOutput"]["properties"]
    assert tier["discount_rate"]["type"] == "string"
    assert tier["discount_rate"]["format"] == "decimal"


def test_schema_default_rendering_is_yaml(anon_client):
    # when
    response = anon_client.get("/api/schema/")
    # then
    assert response.status_code == 200
    assert b"/api/v1/terminal/identify:" in response.content


def test_docs_page_is_served(anon_client):
    # when
    response = anon_client.get("/api/docs/")
    script = anon_client.get("/api/docs/?script=")
    # then the page loads its start-up script from the same URL (no inline script, for the CSP)
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()
    assert b'<script src="/api/docs/?script="></script>' in response.content
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")
    assert b"/api/schema/" in script.content


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v1/terminal/nope", "/api/v2/me", "/api/v1"])
def test_unknown_api_path_is_404_in_the_error_envelope(anon_client, path):
    # when
    response = anon_client.get(path)
    # then
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": {"code": "not_found", "message": "Not found.", "detail": {}}}


def test_unknown_api_path_post_without_csrf_token_is_404_too():
    # given a POS client that posts to a misspelt path (no session, no CSRF token)
    client = APIClient(enforce_csrf_checks=True)
    # when
    response = client.post("/api/v1/terminal/identfy", {"code": "x"}, format="json")
    # then
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_wrong_method_is_405_in_the_error_envelope(terminal_client):
    # when
    response = terminal_client.get("/api/v1/terminal/identify")
    # then
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
