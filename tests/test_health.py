from datetime import timedelta

import pytest
from django.utils import timezone

from loyalty.celery import app as celery_app
from loyalty.models import Heartbeat
from loyalty.tasks import heartbeat

pytestmark = pytest.mark.django_db


@pytest.fixture
def broker_down(monkeypatch, tmp_path):
    # A Unix socket nobody listens on: the broker connection fails at once.
    monkeypatch.setattr(celery_app.conf, "broker_url", f"redis+socket://{tmp_path / 'nobody.sock'}")
    monkeypatch.setattr(celery_app.conf, "broker_write_url", None)
    yield
    # Connections made to the dead socket must not outlive the test.
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


def test_healthz_is_200_when_database_broker_and_beat_are_alive(anon_client):
    # given the heartbeat task ran just now
    heartbeat()
    # when
    response = anon_client.get("/healthz")
    # then
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["broker"] == {"ok": True}
    assert body["checks"]["beat"]["ok"] is True
    assert 0 <= body["checks"]["beat"]["age_seconds"] < 5
    assert response["Cache-Control"].startswith("max-age=0")


def test_healthz_is_503_when_beat_heartbeat_is_stale(anon_client, settings):
    # given
    stale = timezone.now() - timedelta(seconds=settings.LOYALTY_HEARTBEAT_MAX_AGE_SECONDS + 5)
    Heartbeat.objects.create(name="beat", at=stale)
    # when
    response = anon_client.get("/healthz")
    # then
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["broker"] == {"ok": True}
    assert body["checks"]["beat"]["ok"] is False
    assert body["checks"]["beat"]["last_heartbeat"] == stale.isoformat()


def test_healthz_is_503_when_beat_never_ran(anon_client):
    # when
    response = anon_client.get("/healthz")
    # then
    assert response.status_code == 503
    assert response.json()["checks"]["beat"] == {"ok": False, "last_heartbeat": None}


def test_healthz_is_503_when_broker_is_down(anon_client, broker_down):
    # given
    heartbeat()
    # when
    response = anon_client.get("/healthz")
    # then
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["beat"]["ok"] is True
    assert body["checks"]["broker"]["ok"] is False
    assert body["checks"]["broker"]["error"]


def test_healthz_answers_get_only(anon_client):
    # when
    response = anon_client.post("/healthz")
    # then
    assert response.status_code == 405
