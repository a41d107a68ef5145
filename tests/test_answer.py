import pytest

from sharpen.core.answer import extract_answer, vote_key


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2 + 5 = 7\nAnswer: 7", "7"),
        ("Answer: 7.", "7"),
        ("**Answer:** $12$", "12"),
        ("- answer: -3", "-3"),
        ("Answer: 1\nAnswer: 2", "1"),  # the first Answer line is the one generation stopped at
        ("The answer is 6.", "6"),
        ("x = 3 - 4 = -1", "-1"),  # fallback: last number
        ("1,234 apples", "1234"),
        ("Answer:   ", None),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_without_fallback():
    assert extract_answer("x = 3", fallback=False) is None
    assert extract_answer("Answer: 3", fallback=False) == "3"


def test_vote_key_numbers_agree():
    assert vote_key("7") == vote_key("7.0") == vote_key(" 7.00 ")
    assert vote_key("1,000") == vote_key("1000")
    assert vote_key("7") != vote_key("8")
    assert vote_key("Blue  Sky") == vote_key("blue sky")
    assert vote_key(None) is None
