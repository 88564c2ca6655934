import numpy as np
import pytest

from frugalnn.errors import UserError
from frugalnn.methods.text.features import (
    char_ngrams,
    pad_ragged,
    stable_hash,
    token_features,
    token_group_names,
)


def _fnv1a_reference(units: list[int]) -> int:
    """An independent 32-bit FNV-1a over integer units (spec constants written out)."""
    h = 2166136261
    for u in units:
        h ^= u
        h = (h * 16777619) % 2**32
    return h


@pytest.mark.parametrize(("text", "group", "expected"), [
    ("", 0, 3983498527), ("a", 0, 1146105178), ("ab", 1, 1331051055),
    ("çok", 2, 2612242528), ("日本", 3, 302342043),
])
def test_stable_hash_fixed_values(text: str, group: int, expected: int) -> None:
    assert stable_hash(text, group) == expected
    assert _fnv1a_reference([0x110000 + group, *map(ord, text)]) == expected


def test_vectorised_ngrams_match_the_scalar_hash() -> None:
    texts = ["Hello", "", "çok güzel", "日本語"]
    groups = char_ngrams(texts, (1, 2, 3), max_chars=100)
    for j, n in enumerate((1, 2, 3)):
        values, offsets = groups[j]
        for i, t in enumerate(texts):
            w = " " + t.lower() + " "
            want = [stable_hash(w[k:k + n], j) for k in range(len(w) - n + 1)]
            assert values[offsets[i]:offsets[i + 1]].tolist() == want


def test_bad_input() -> None:
    groups = char_ngrams([b"ab\xff", ""], (1,), 10)
    assert groups[0][0][0] == stable_hash(" ", 0)
    assert groups[0][1].tolist() == [0, 5, 7]  # U+FFFD replaces the invalid byte
    with pytest.raises(UserError, match="strings"):
        char_ngrams([None], (1,), 10)  # type: ignore[list-item]


def test_max_chars_and_padding() -> None:
    groups = char_ngrams(["abcdef", "a"], (2,), max_chars=3)
    assert np.diff(groups[0][1]).tolist() == [4, 2]
    x = pad_ragged(groups, np.array([1, 0]))
    assert x.shape == (2, 1, 4) and x[0, 0, 2:].tolist() == [-1, -1]


def test_token_features_window_and_affixes() -> None:
    groups, sent = token_features([["Ali", "geldi"], ["Bu"]], window=1, affixes=(2,),
                                  orders=(2,))
    names = token_group_names(1, (2,), (2,))
    assert len(groups) == len(names) and sent.tolist() == [0, 0, 1]
    s2 = groups[names.index("s2")][0]
    assert s2[1] == stable_hash("di", names.index("s2"))
    w_next = groups[names.index("w+1")][0]
    assert w_next[0] != w_next[1] and w_next[1] == w_next[2]  # both at a sentence end
