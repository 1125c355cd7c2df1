"""One rule for password files: the first line, without its line end."""

from __future__ import annotations

import pytest

from mailrouter.config import secret_line


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("s3cret\n", "s3cret"),
        ("s3cret", "s3cret"),
        ("s3cret\r\n", "s3cret"),
        ("s3cret\nsecond line\n", "s3cret"),
        (" spaced secret \n", " spaced secret "),
        ("\nafter an empty first line\n", ""),
    ],
)
def test_first_line_without_line_end(text: str, secret: str) -> None:
    assert secret_line(text) == secret
