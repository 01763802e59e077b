"""gunicorn's production configuration for ``loyalty.wsgi``.

gunicorn reads this file when started from the project's folder
(``gunicorn loyalty.wsgi``: ``./gunicorn.conf.py`` is its default), or with
``-c /path/to/gunicorn.conf.py``. It is the configuration `make bench`
measures, the soak runs and the fault drills start (``scripts/loadkit.py``),
so the figures in docs/performance.md are this file's. Settings given on the
command line win over it (``-w``, ``-b``, ``--threads``…).

- ``workers``: 2 per core plus one (5 on the 2-core machines of the bench),
  or ``WEB_CONCURRENCY``. Every worker holds its own database connections
  (``threads`` of them, persistent: ``CONN_MAX_AGE``), which is what the
  PostgreSQL side has to carry (docs/scaling.md: behind a pooler beyond one
  machine).
- ``worker_class`` ``gthread`` with 4 threads: a till's request spends most of
  its time waiting for PostgreSQL, so a worker serves others meanwhile.
- ``bind``: ``LOYALTY_BIND`` (default ``127.0.0.1:8000``; a reverse proxy in
  front terminates TLS).
- ``timeout`` 30 s: a worker that answers nothing for that long is restarted.
- ``keepalive`` 2 s (gunicorn's default): the tills keep their connection
  between calls of one sale.
"""

from __future__ import annotations

import os

wsgi_app = "loyalty.wsgi"
bind = os.environ.get("LOYALTY_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY") or 2 * (os.cpu_count() or 1) + 1)
worker_class = "gthread"
threads = 4
timeout = 30
keepalive = 2
accesslog = None  # the app logs what matters (structured, without personal data)
errorlog = "-"
