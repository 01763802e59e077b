"""``make run``: embedded servers, migrations, demo data, an admin login, then
web + Celery worker + Celery beat under honcho. Ctrl-C stops everything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
PY = sys.executable


def manage(*args: str) -> None:
    subprocess.run([PY, "manage.py", *args], cwd=BASE_DIR, check=True)


def main() -> int:
    os.environ.setdefault("DEBUG", "1")
    port = os.environ.get("PORT", "8000")
    var = Path(os.environ.get("LOYALTY_VAR_DIR", BASE_DIR / "var"))
    var.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(BASE_DIR / "scripts"))
    import devservices

    # Stop on exit only the embedded servers this run started (make test may share them).
    already_running = devservices.pg_running() and devservices.redis_running()
    subprocess.run([PY, "scripts/devservices.py", "start"], cwd=BASE_DIR, check=True)
    try:
        manage("migrate", "--noinput")
        manage("seed_demo")
        manage("ensure_admin", "--url", f"http://127.0.0.1:{port}/admin/")
        print(f"API docs: http://127.0.0.1:{port}/api/docs/   health: http://127.0.0.1:{port}/healthz", flush=True)
        print(f"Clerk console: http://127.0.0.1:{port}/console/   member page: http://127.0.0.1:{port}/m/", flush=True)
        procfile = var / "Procfile"
        bin_dir = Path(PY).parent
        procfile.write_text(
            f"web: {PY} manage.py runserver 127.0.0.1:{port} --noreload\n"
            f"worker: {bin_dir / 'celery'} -A loyalty worker -l info --concurrency 2\n"
            f"beat: {bin_dir / 'celery'} -A loyalty beat -l info "
            f"--scheduler django_celery_beat.schedulers:DatabaseScheduler --pidfile {var / 'celerybeat.pid'}\n"
        )
        env = dict(os.environ)
        env.pop("PORT", None)
        return subprocess.run(
            [str(bin_dir / "honcho"), "-f", str(procfile), "-d", str(BASE_DIR), "start"], env=env, check=False
        ).returncode
    except KeyboardInterrupt:
        return 130
    finally:
        if not already_running:
            subprocess.run([PY, "scripts/devservices.py", "stop"], cwd=BASE_DIR, check=False)


if __name__ == "__main__":
    sys.exit(main())
