"""``make audit`` (scripts/audit.py): what fails CI and what only warns, from
pip-audit's JSON report. Running pip-audit itself needs the vulnerability
service, so CI runs it as its own step; these tests cover the decision."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "audit.py"


@pytest.fixture(scope="module")
def audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLEAN = {"name": "django", "version": "5.2.19", "vulns": []}
VULNERABLE = {
    "name": "django",
    "version": "5.2.1",
    "vulns": [{"id": "PYSEC-2025-1", "fix_versions": ["5.2.2"], "aliases": ["CVE-2025-1"], "description": "x"}],
}
SKIPPED = {"name": "celery", "skip_reason": "Dependency not found on PyPI and could not be audited: celery (5.7.0)"}


def test_a_known_vulnerability_fails_and_names_the_fixed_version(audit):
    status, lines = audit.verdict({"dependencies": [VULNERABLE, CLEAN]}, strict=False)
    assert status == 1
    assert lines[0] == "VULNERABLE django==5.2.1: PYSEC-2025-1 (fixed in: 5.2.2)"


def test_clean_packages_pass(audit):
    status, lines = audit.verdict({"dependencies": [CLEAN]}, strict=True)
    assert status == 0
    assert lines == ["1 of 1 packages checked, 0 with known vulnerabilities."]


def test_packages_the_service_could_not_check_warn_and_say_how_many(audit):
    status, lines = audit.verdict({"dependencies": [CLEAN, SKIPPED]}, strict=False)
    assert status == 0
    assert lines == [
        "1 of 2 packages checked, 0 with known vulnerabilities.",
        "WARNING: 1 packages could not be checked by the vulnerability service "
        "(first: Dependency not found on PyPI and could not be audited: celery (5.7.0)).",
    ]


def test_unchecked_packages_fail_in_strict_mode(audit):
    status, _lines = audit.verdict({"dependencies": [CLEAN, SKIPPED]}, strict=True)
    assert status == 1


def test_a_report_without_packages_fails(audit):
    status, lines = audit.verdict({"dependencies": []}, strict=False)
    assert status == 1
    assert lines[-1] == "ERROR: pip-audit reported no packages at all."
