import gzip
from pathlib import Path

import pytest

from frugalnn.data.catalog import get_dataset
from frugalnn.data.conllu import read_conllu
from frugalnn.data.langid import read_tsv
from frugalnn.errors import UserError


def _tsv(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    return path


def test_langid_splits_and_unknown_test_labels(tmp_path: Path) -> None:
    d = tmp_path / "text" / "langid-manpages"
    _tsv(d / "train.tsv.gz", [b"en\thello there", b"de\tguten Tag", b"", b"en\tyes"])
    _tsv(d / "test.tsv.gz", [b"de\tnein", b"xx\tunknown label", b"en\tno"])
    train = get_dataset("langid", "train", tmp_path)
    test = get_dataset("langid", "test", tmp_path)
    assert train.classes == ["de", "en"] and len(train) == 3
    assert [test[i] for i in range(len(test))] == [("nein", 0), ("no", 1)]
    assert test.skipped_labels == {"xx": 1}


@pytest.mark.parametrize(("line", "message"), [
    (b"no tab here", "expected label<TAB>sentence"),
    (b"\tempty label", "expected label<TAB>sentence"),
    (b"en\tbad \xff byte", "not UTF-8"),
])
def test_langid_malformed_lines_name_file_and_line(tmp_path: Path, line: bytes,
                                                   message: str) -> None:
    path = _tsv(tmp_path / "train.tsv.gz", [b"en\tok", line])
    with pytest.raises(UserError, match=rf"train.tsv.gz:2: {message}"):
        read_tsv(path)


def test_missing_files_say_where(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="langid-manpages"):
        get_dataset("langid", "train", tmp_path)
    with pytest.raises(UserError, match="pos-turkish-ud"):
        get_dataset("pos-turkish", "train", tmp_path)


CONLLU = """# sent_id = 1
# text = Ali geldi.
1\tAli\tali\tPROPN\tProp\t_\t2\tnsubj\t_\t_
2-3\tgeldi.\t_\t_\t_\t_\t_\t_\t_\t_
2\tgeldi\tgel\tVERB\tVerb\t_\t0\troot\t_\tSpaceAfter=No
3\t.\t.\tPUNCT\tPunc\t_\t2\tpunct\t_\t_

1\tBu\tbu\tDET\tDet\t_\t0\troot\t_\t_
"""


def test_conllu_reads_words_and_both_tag_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.conllu"
    path.write_text(CONLLU, encoding="utf-8")
    sents = read_conllu(path)
    assert [s.words for s in sents] == [["Ali", "geldi", "."], ["Bu"]]
    assert sents[0].upos == ["PROPN", "VERB", "PUNCT"] and sents[0].xpos[0] == "Prop"


def test_conllu_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "t.conllu.gz"
    path.write_bytes(gzip.compress(b"1\tAli\tali\tPROPN\n"))
    with pytest.raises(UserError, match=r"t.conllu.gz:1: expected 10 tab-separated"):
        read_conllu(path)


def test_pos_turkish_split_is_fixed_and_disjoint(tmp_path: Path) -> None:
    d = tmp_path / "text" / "pos-turkish-ud"
    d.mkdir(parents=True)
    block = "".join(f"1\tw{i}\tw\tNOUN\tNoun\t_\t0\troot\t_\t_\n\n" for i in range(20))
    (d / "web.conllu.gz").write_bytes(gzip.compress(block.encode()))
    train = get_dataset("pos-turkish", "train", tmp_path)
    test = get_dataset("pos-turkish", "test", tmp_path)
    assert len(train) == 16 and len(test) == 4
    assert not {s.words[0] for s in train.sentences} & {s.words[0] for s in test.sentences}
