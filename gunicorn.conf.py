"""gunicorn's production configuration for ``loyalty.wsgi``.

gunicorn reads this file when started from the project's folder
(``gunicorn loyalty.wsgi``: ``./gunicorn.conf.py`` is its default), or with
``-c /path/to/gunicorn.conf.py``. It is the configuration `make bench`
measures, the soak runs and the fault drills start (``scripts/loadkit.py``),
so the figures in docs/performance.md are this file's. Settings given on the
command line win over it (``-w``, ``-b``, ``--threads``…).

- ``workers``: 4 per core (8 on the 2-core machines of the bench), or
  ``WEB_CONCURRENCY``. Every worker holds one persistent database connection
  (``CONN_MAX_AGE``), which is what the PostgreSQL side has to carry
  (docs/scaling.md: behind a pooler beyond one machine).
- ``worker_class`` ``gthread`` with 1 thread: one request at a time per
  process, with keep-alive (the ``sync`` worker closes every connection). A
  till's request is mostly Python on the CPU; threads of one process take turns
  on its interpreter lock, and measured on the full bench data that cost more
  than it saved: 8 workers × 1 thread reached identify 0.71–0.76 × floor and the
  purchase 0.40–0.41 × in all four runs, 5 workers × 4 threads 0.66–0.75 × and
  0.35–0.41 × (with 8 database connections instead of 20; docs/performance.md,
  session 14): a modest gain, about the size of the spread between runs. Four
  processes per core cover a request's waits for PostgreSQL.
  A long request (an admin export) holds its worker for its whole time: run the
  admin on a gunicorn of its own where operators run heavy exports.
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
workers = int(os.environ.get("WEB_CONCURRENCY") or 4 * (os.cpu_count() or 1))
worker_class = "gthread"
threads = 1
timeout = 30
keepalive = 2
accesslog = None  # the app logs what matters (structured, without personal data)
errorlog = "-"
