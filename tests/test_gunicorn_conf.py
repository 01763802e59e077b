"""``gunicorn.conf.py``: the production web server's configuration, the one
`make bench`, the soak and the fault drills start (``scripts/loadkit.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scripts_import import script_module

BASE_DIR = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
loadkit = script_module("loadkit")


def _gunicorn(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    production = {
        "DEBUG": "0",
        "SECRET_KEY": "test-a-long-random-production-like-secret-key-value-0123456789",
        "ALLOWED_HOSTS": "loyalty.example.com",
    }
    base = {k: v for k, v in os.environ.items() if k not in ("WEB_CONCURRENCY", "LOYALTY_BIND")}
    return subprocess.run(  # noqa: S603 - our own gunicorn
        [str(GUNICORN), *args], cwd=BASE_DIR, env=base | production | env, capture_output=True, text=True, timeout=120
    )


def _printed(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return {
        name.strip(): value.strip()
        for name, _, value in (line.partition("=") for line in result.stdout.splitlines())
        if value
    }


def test_gunicorn_started_in_the_project_folder_serves_loyalty_wsgi_with_production_settings():
    # when gunicorn checks the configuration it would run with (its default file, ./gunicorn.conf.py)
    result = _gunicorn("--check-config")
    # then the application loads with production settings
    assert result.returncode == 0, result.stderr
    printed = _printed(_gunicorn("--print-config"))
    assert printed["wsgi_app"] == "loyalty.wsgi"
    assert (printed["worker_class"], printed["threads"]) == ("gthread", "1")
    assert (printed["timeout"], printed["keepalive"]) == ("30", "2")


def test_workers_are_four_per_core_unless_web_concurrency_says_otherwise():
    # given no WEB_CONCURRENCY, then 3
    default = _printed(_gunicorn("--print-config"))
    chosen = _printed(_gunicorn("--print-config", WEB_CONCURRENCY="3", LOYALTY_BIND="0.0.0.0:9000"))
    # then
    assert default["workers"] == str(4 * (os.cpu_count() or 1))
    assert default["bind"] == "['127.0.0.1:8000']"
    assert (chosen["workers"], chosen["bind"]) == ("3", "['0.0.0.0:9000']")


@pytest.mark.parametrize("workers", [None, 2])
def test_the_load_tools_describe_the_configuration_they_start(workers, monkeypatch):
    # given the configuration as gunicorn reads it
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    printed = _printed(_gunicorn("--print-config"))
    # when the bench and the soak describe the server they start
    described = loadkit.gunicorn_described(workers)
    # then it is gunicorn's own reading, with the caller's number of workers if any
    assert described == f"-w {workers or printed['workers']} -k gthread --threads {printed['threads']}"
