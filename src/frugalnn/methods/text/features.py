"""Hashed text features: character n-grams, words, suffixes, prefixes and word shapes.

Every feature is a sequence of Unicode code points hashed with 32-bit FNV-1a, one code
point per step (``h = (h ^ cp) * 16777619 mod 2**32`` from ``h = 2166136261``), after a
*group tag* (a number above the Unicode range, ``0x110000 + group``), so that the same
string in two feature groups lands in unrelated buckets. The hash depends only on the
code points: the same bucket on every machine and Python version (no ``hash()``, no
``PYTHONHASHSEED``). A model reduces the 32-bit values modulo its own bucket counts, so
the features do not depend on the model size.

The functions take batches of raw strings and are vectorised with numpy: the strings are
joined and decoded into one code-point array at C speed, and the hashing loops over the
n-gram order (or the capped word length), never over characters. Input handling: text is
lower-cased and wrapped in one space on each side; ``bytes`` are decoded as UTF-8 with
invalid bytes replaced by U+FFFD (documented, never an error); ``None`` or other types are
a :class:`UserError`; an empty string gives the features of the two boundary spaces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from frugalnn.errors import UserError

__all__ = ["FNV_OFFSET", "FNV_PRIME", "TAG_BASE", "char_ngrams", "codepoints", "hash_spans",
           "normalise", "pad_ragged", "stable_hash", "token_features"]

FNV_OFFSET, FNV_PRIME, _MASK = 0x811C9DC5, 0x01000193, 0xFFFFFFFF
#: Group tags start above the last Unicode code point (0x10FFFF).
TAG_BASE = 0x110000
#: Words are hashed on at most this many code points.
MAX_WORD = 32


def stable_hash(text: str, group: int = 0) -> int:
    """The 32-bit hash of ``text`` in feature group ``group`` (scalar reference)."""
    h = FNV_OFFSET
    for cp in (TAG_BASE + group, *map(ord, text)):
        h = ((h ^ cp) * FNV_PRIME) & _MASK
    return h


def normalise(text: str | bytes) -> str:
    """Lower-cased text (``bytes`` decoded as UTF-8, invalid bytes -> U+FFFD)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise UserError(f"text features need strings, got {type(text).__name__}")
    return text.lower()


def codepoints(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(codes, starts, lengths)``: all code points of ``texts`` in one uint64 array."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    codes = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    starts = np.zeros(len(texts), dtype=np.int64)
    if len(texts) > 1:
        np.cumsum(lengths[:-1], out=starts[1:])
    return codes.astype(np.uint64), starts, lengths


def hash_spans(codes: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
               group: int) -> np.ndarray:
    """The hash (as in :func:`stable_hash`) of each span ``codes[s : s + n]`` (int64)."""
    h = np.full(len(starts), ((FNV_OFFSET ^ (TAG_BASE + group)) * FNV_PRIME) & _MASK,
                dtype=np.uint64)
    if len(codes) == 0 or len(starts) == 0:
        return h.astype(np.int64)
    last = len(codes) - 1
    for k in range(int(lengths.max(initial=0))):
        c = codes[np.minimum(starts + k, last)]
        stepped = ((h ^ c) * np.uint64(FNV_PRIME)) & np.uint64(_MASK)
        h = np.where(lengths > k, stepped, h)
    return h.astype(np.int64)


def char_ngrams(texts: Sequence[str | bytes], orders: Sequence[int], max_chars: int,
                first_group: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per order ``n``: ``(values, offsets)``, the hashed n-grams of every text (text ``i``
    owns ``values[offsets[i]:offsets[i + 1]]``), each text cut to ``max_chars`` code points
    and wrapped in spaces. Order ``orders[j]`` is feature group ``first_group + j``."""
    wrapped = [" " + normalise(t)[:max_chars] + " " for t in texts]
    codes, starts, lengths = codepoints(wrapped)
    out = []
    for j, n in enumerate(orders):
        counts = np.maximum(lengths - n + 1, 0)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        within = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], counts)
        pos = np.repeat(starts, counts) + within
        out.append((hash_spans(codes, pos, np.full(len(pos), n), first_group + j), offsets))
    return out


def pad_ragged(groups: Sequence[tuple[np.ndarray, np.ndarray]], rows: np.ndarray,
               width: int | None = None) -> torch.Tensor:
    """Rows ``rows`` of ragged groups as one LongTensor ``[len(rows), G, K]``, padded with
    -1 (``K`` = the longest row, or ``width``: longer rows are cut)."""
    rows = np.asarray(rows, dtype=np.int64)
    counts = [offs[rows + 1] - offs[rows] for _, offs in groups]
    k = int(max((int(c.max(initial=0)) for c in counts), default=0))
    k = max(1, k if width is None else width)
    out = np.full((len(rows), len(groups), k), -1, dtype=np.int64)
    for g, ((values, offs), cnt) in enumerate(zip(groups, counts)):
        cnt = np.minimum(cnt, k)
        r = np.repeat(np.arange(len(rows)), cnt)
        first = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(cnt, out=first[1:])
        col = np.arange(first[-1], dtype=np.int64) - np.repeat(first[:-1], cnt)
        out[r, g, col] = values[np.repeat(offs[rows], cnt) + col]
    return torch.from_numpy(out)


def _shapes(words: Sequence[str]) -> list[str]:
    """A coarse word shape per word (capitalisation, digits, punctuation)."""
    def shape(w: str) -> str:
        if w.isdigit():
            return "9"
        if any(ch.isdigit() for ch in w[:4]):
            return "9a"
        if not any(ch.isalpha() for ch in w[:4]):
            return "."
        if w.isupper():
            return "AA"
        return "Aa" if w[:1].isupper() else "a"
    return [shape(w) for w in words]


#: Feature groups of :func:`token_features`, in order (``w-2`` .. ``w+2``: the words of the
#: window; ``s1`` .. ``s3``: suffixes; ``p1`` .. ``p3``: prefixes; ``shape``; ``c2``,
#: ``c3``: character n-grams of the word).
def token_group_names(window: int, affixes: Sequence[int], orders: Sequence[int]) -> list[str]:
    return ([f"w{o:+d}" for o in range(-window, window + 1)] + [f"s{n}" for n in affixes]
            + [f"p{n}" for n in affixes] + ["shape"] + [f"c{n}" for n in orders])


def token_features(sentences: Sequence[Sequence[str]], *, window: int = 2,
                   affixes: Sequence[int] = (1, 2, 3), orders: Sequence[int] = (2, 3),
                   ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """Hashed features of every token of ``sentences`` (groups as
    :func:`token_group_names`), ragged per token, and each token's sentence index."""
    words = [w for s in sentences for w in s]
    sent = np.repeat(np.arange(len(sentences)), [len(s) for s in sentences]).astype(np.int64)
    n = len(words)
    lower = [normalise(w)[:MAX_WORD] for w in words]
    codes, starts, lengths = codepoints(lower)
    one = np.arange(n + 1, dtype=np.int64)  # offsets of groups with one feature per token
    groups: list[tuple[np.ndarray, np.ndarray]] = []
    word_hash = hash_spans(codes, starts, lengths, 0)
    index = np.arange(n)
    for g, o in enumerate(range(-window, window + 1)):
        j = index + o
        inside = (j >= 0) & (j < n)
        jj = np.clip(j, 0, max(n - 1, 0))
        inside &= sent[jj] == sent if n else inside
        edge = stable_hash("<s>" if o < 0 else "</s>", g)
        shifted = word_hash[jj] if n else word_hash
        groups.append((np.where(inside, _regroup(shifted, g), edge), one))
    gid = 2 * window + 1
    for n_aff in affixes:
        ln = np.minimum(lengths, n_aff)
        groups.append((hash_spans(codes, starts + lengths - ln, ln, gid), one))
        gid += 1
    for n_aff in affixes:
        groups.append((hash_spans(codes, starts, np.minimum(lengths, n_aff), gid), one))
        gid += 1
    shape_codes, shape_starts, shape_len = codepoints(_shapes(words))
    groups.append((hash_spans(shape_codes, shape_starts, shape_len, gid), one))
    gid += 1
    groups += char_ngrams(lower, orders, MAX_WORD, first_group=gid)
    return groups, sent


def _regroup(h: np.ndarray, group: int) -> np.ndarray:
    """Move word hashes into window group ``group`` (one more FNV step with the group tag)."""
    return ((h.astype(np.uint64) ^ np.uint64(TAG_BASE + group)) * np.uint64(FNV_PRIME)
            & np.uint64(_MASK)).astype(np.int64)
