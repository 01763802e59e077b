"""Write docs/errors.md from the error classes (``python scripts/error_codes.py``)."""

import os
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loyalty.settings")
os.environ.setdefault("DEBUG", "1")

import django  # noqa: E402

django.setup()

from loyalty.errors import error_catalogue_markdown  # noqa: E402

(BASE_DIR / "docs" / "errors.md").write_text(error_catalogue_markdown(), encoding="utf-8")
print("wrote docs/errors.md")
