from pathlib import Path

import pytest
import torch
from test_text_recipe import _write_langid, _write_pos

from frugalnn.data.splits import load_splits
from frugalnn.errors import UserError
from frugalnn.methods.text.references import ReferenceConfig, char_ids, train_reference


def test_char_ids_bucket_code_points_and_pad() -> None:
    ids = char_ids(["Ab", b"\xff", ""], 4, 100)
    assert ids.shape == (3, 4) and ids.dtype == torch.long
    assert ids[0, 0] == ord("a") % 99 + 1 and ids[0, 2:].eq(0).all()
    assert ids[1, 0] == 0xFFFD % 99 + 1 and ids[2].eq(0).all()


def test_char_cnn_reference_learns_langid(tmp_path: Path) -> None:
    splits = load_splits("langid", _write_langid(tmp_path), val_fraction=0.2)
    cfg = ReferenceConfig(epochs=6, lr=1e-2, batch_size=16, channels=16, char_dim=8,
                          char_buckets=256)
    ref = train_reference(splits.train, cfg, val_data=splits.val)
    assert 1 <= ref.chosen_epoch <= 6 and len(ref.history) == 6
    assert ref.accuracy(splits.test) > 0.9
    assert ref.predict(["kala mala", "zorg borg"]) == ["aa", "bb"]
    assert ref.nbytes() == 4 * sum(p.numel() for p in ref.net.parameters())


def test_bilstm_reference_tags_tokens(tmp_path: Path) -> None:
    splits = load_splits("pos-turkish", _write_pos(tmp_path), val_fraction=0.2)
    cfg = ReferenceConfig(task="pos", epochs=8, lr=1e-2, batch_size=8, word_dim=8,
                          char_dim=8, char_channels=8, hidden=8, char_buckets=128)
    ref = train_reference(splits.train, cfg, val_data=splits.val)
    assert ref.accuracy(splits.test) > 0.9
    assert len(ref.predictions(ref.encode(splits.test))) == sum(
        len(s[0]) for s in splits.test)
    assert ref.tag([["ev1ler", "geldi", "."], []]) == [["NOUN", "VERB", "PUNCT"], []]
    with pytest.raises(UserError, match="tagger"):
        ref.predict(["x"])


def test_reference_config_errors() -> None:
    with pytest.raises(UserError, match="unknown text task"):
        ReferenceConfig(task="ner").validate()
    with pytest.raises(UserError, match="hidden"):
        ReferenceConfig(hidden=0).validate()
