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
