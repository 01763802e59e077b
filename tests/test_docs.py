from pathlib import Path

from loyalty.errors import error_catalogue_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_error_code_catalogue_is_current():
    # given the error classes in the code
    expected = error_catalogue_markdown()
    # when reading the committed catalogue
    committed = (DOCS / "errors.md").read_text(encoding="utf-8")
    # then they agree (run `python scripts/error_codes.py` after adding an error)
    assert committed == expected


def test_every_beat_entry_is_documented(settings):
    # given the beat schedule in code
    architecture = (DOCS / "architecture.md").read_text(encoding="utf-8")
    # then each entry and its task is in the documented schedule
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        assert f"`{name}`" in architecture, name
        assert f"`{entry['task']}`" in architecture, entry["task"]
