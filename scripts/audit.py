"""``make audit``: known vulnerabilities of the pinned requirements (pip-audit).

pip-audit resolves ``requirements.txt`` and ``requirements-dev.txt`` (with
what they pull in) in a throwaway virtualenv and asks the vulnerability
service (PyPI's JSON API) about each package version.

Exit status:

* 1 when any package has a known vulnerability: upgrade its pin (pip-audit
  names the fixed versions), run the tests it affects, and run this again;
* 1 when pip-audit fails otherwise (a requirement that cannot be resolved);
* 0 when no known vulnerability is found. Packages the service could not
  look up (the service unreachable, or a version it does not know) are
  listed as a warning, not a failure: CI reaches only the package registries,
  and a vulnerability feed being out of reach says nothing about our pins, so
  it must not block every merge. The warning says how many packages went
  unchecked, so a run that checked nothing never looks clean. With
  ``AUDIT_STRICT=1`` (a machine that reaches the service) they fail too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
REQUIREMENTS = ("requirements.txt", "requirements-dev.txt")
# What pip-audit prints when it cannot reach the vulnerability service at all.
UNREACHABLE_MARKERS = ("network may be blocking this service", "Could not connect", "not redirecting properly")


def verdict(report: dict[str, Any], *, strict: bool) -> tuple[int, list[str]]:
    """(exit status, lines to print) for pip-audit's JSON report."""
    dependencies = report.get("dependencies", [])
    vulnerable = [dep for dep in dependencies if dep.get("vulns")]
    skipped = [dep for dep in dependencies if dep.get("skip_reason")]
    lines = []
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed version yet"
            lines.append(f"VULNERABLE {dep['name']}=={dep.get('version')}: {vuln.get('id')} (fixed in: {fixed})")
    checked = len(dependencies) - len(skipped)
    lines.append(f"{checked} of {len(dependencies)} packages checked, {len(vulnerable)} with known vulnerabilities.")
    if skipped:
        lines.append(
            f"WARNING: {len(skipped)} packages could not be checked by the vulnerability service "
            f"(first: {skipped[0]['skip_reason']})."
        )
    if not dependencies:
        lines.append("ERROR: pip-audit reported no packages at all.")
        return 1, lines
    if vulnerable or (strict and skipped):
        return 1, lines
    return 0, lines


def main() -> int:
    strict = os.environ.get("AUDIT_STRICT", "") == "1"
    command = [str(Path(sys.executable).parent / "pip-audit"), "--format", "json", "--progress-spinner", "off"]
    for name in REQUIREMENTS:
        command += ["-r", name]
    done = subprocess.run(command, cwd=BASE_DIR, capture_output=True, text=True, check=False)  # noqa: S603
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        sys.stderr.write(done.stderr)
        if any(marker in done.stderr for marker in UNREACHABLE_MARKERS):
            print("WARNING: the vulnerability service could not be reached; nothing was checked.")
            return 1 if strict else 0
        print(f"ERROR: pip-audit failed (exit {done.returncode}).")
        return done.returncode or 1
    status, lines = verdict(report, strict=strict)
    for line in lines:
        print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
