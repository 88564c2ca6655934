import gzip
import json
import random
from pathlib import Path

import pytest
import torch

import frugalnn
from frugalnn.cli import main
from frugalnn.data.splits import load_splits
from frugalnn.errors import UserError
from frugalnn.methods.text.recipe import NgramConfig, TextModel, ngram, run_ngram

WORDS = {"aa": "kala mala tala pala sala", "bb": "zorg vorg dorg korg borg",
         "cc": "ыва пыр жыл мыр выл"}


def _write_langid(root: Path, n: int = 90) -> Path:
    rng = random.Random(0)
    d = root / "text" / "langid-manpages"
    d.mkdir(parents=True)
    for split, count in (("train", n), ("test", n // 3)):
        lines = []
        for i in range(count):
            lang = sorted(WORDS)[i % 3]
            words = WORDS[lang].split()
            lines.append(f"{lang}\t" + " ".join(rng.choice(words) for _ in range(4)))
        (d / f"{split}.tsv.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    return root


def _write_pos(root: Path, n: int = 40) -> Path:
    d = root / "text" / "pos-turkish-ud"
    d.mkdir(parents=True)
    rows = []
    for i in range(n):
        rows.append(f"1\tev{i % 5}ler\t_\tNOUN\tNoun\t_\t0\troot\t_\t_\n"
                    f"2\tgeldi\t_\tVERB\tVerb\t_\t1\tx\t_\t_\n3\t.\t_\tPUNCT\tPunc\t_\t2\tp\t_\t_\n\n")
    (d / "web.conllu.gz").write_bytes(gzip.compress("".join(rows).encode()))
    return root


def test_public_entry_point_trains_a_budgeted_8bit_model(tmp_path: Path) -> None:
    splits = load_splits("langid", _write_langid(tmp_path), val_fraction=0.2)
    cfg = frugalnn.NgramConfig(budget_bytes=8000, epochs=4, lr=2e-2, batch_size=16)
    model = frugalnn.ngram(splits.train, cfg, val_data=splits.val)
    assert model.net.quantized and model.net.nbytes() <= 8000
    assert 1 <= model.chosen_epoch <= 4
    assert model.predict(["kala mala", "zorg borg", "пыр выл"]) == ["aa", "bb", "cc"]
    assert len(model.predict(["", b"\xff\xfe", "???"])) == 3  # odd input never crashes
    model.save(tmp_path / "m.pt")
    again = TextModel.load(tmp_path / "m.pt")
    x = model.features(["kala zorg"])
    assert torch.equal(again.net(x), model.net(x))


def test_run_directory_has_records_validation_and_figures(tmp_path: Path) -> None:
    splits = load_splits("langid", _write_langid(tmp_path), val_fraction=0.2)
    cfg = NgramConfig(budget_bytes=8000, epochs=2, lr=2e-2, batch_size=16,
                      latency_sentences=5)
    run = run_ngram(cfg, splits, tmp_path / "run")
    for name in ("records.csv", "summary.json", "validation/records.csv", "model.pt",
                 "extras/text.json", "report"):
        assert (tmp_path / "run" / name).exists(), name
    fig = json.loads((tmp_path / "run" / "extras" / "text.json").read_text())
    assert fig["bytes"] <= 8000 < fig["float_bytes"] and fig["chosen_on"] == "validation"
    assert set(fig["accuracy"]) == {"test", "validation"}
    assert set(fig["accuracy"]["test"]) == {"8bit", "float"}
    assert fig["latency_per_sentence"]["median_ms"] > 0 and run.model.net.quantized


def test_pos_tagger_greedy_decoding(tmp_path: Path) -> None:
    splits = load_splits("pos-turkish", _write_pos(tmp_path), val_fraction=0.2)
    cfg = NgramConfig(task="pos", budget_bytes=20_000, epochs=6, lr=2e-2, batch_size=8)
    model = ngram(splits.train, cfg, val_data=splits.val)
    assert model.net.nbytes() <= 20_000
    assert model.tag([["ev1ler", "geldi", "."], []]) == [["NOUN", "VERB", "PUNCT"], []]
    run = run_ngram(cfg, splits, tmp_path / "run")
    assert run.figures["accuracy"]["test"]["8bit"] > 0.9
    assert run.figures["latency_per_token_ms"] > 0


def test_pos_run_writes_token_records_for_the_report(tmp_path: Path) -> None:
    from frugalnn.evaluation.records import load_records

    splits = load_splits("pos-turkish", _write_pos(tmp_path), val_fraction=0.2)
    cfg = NgramConfig(task="pos", budget_bytes=20_000, epochs=3, lr=2e-2, batch_size=8,
                      latency_sentences=3)
    run = run_ngram(cfg, splits, tmp_path / "run")
    rec = load_records(tmp_path / "run")
    tokens = sum(len(s[0]) for s in splits.test)
    assert len(rec) == tokens and rec.meta["unit"] == "token"
    acc = rec.per_budget_summary()[0]["accuracy"]
    assert acc == pytest.approx(run.figures["accuracy"]["test"]["8bit"])
    assert (rec.columns["flops"] == run.model.net.mlp_flops()).all()
    assert load_records(tmp_path / "run" / "validation").meta["split"] == "validation"
    assert (tmp_path / "run" / "report").is_dir()


def test_config_errors_are_one_line() -> None:
    with pytest.raises(UserError, match="unknown text task"):
        NgramConfig(task="ner").validate()
    with pytest.raises(UserError, match="bits"):
        NgramConfig(bits=4).validate()


def test_cli_trains_and_refuses_a_tiny_budget(tmp_path: Path, capsys) -> None:
    data = _write_langid(tmp_path / "data")
    out = tmp_path / "run"
    rc = main(["text", "train", "--data", "langid", "--data-dir", str(data), "--budget",
               "8000", "--epochs", "1", "--out", str(out), "--no-progress"])
    assert rc == 0 and (out / "extras" / "text.json").is_file()
    assert "bytes" in capsys.readouterr().out
    rc = main(["text", "train", "--data", "langid", "--data-dir", str(data), "--budget",
               "100", "--out", str(tmp_path / "small"), "--no-progress"])
    assert rc == 2
    assert "the smallest" in capsys.readouterr().err


@pytest.mark.data
def test_real_langid_small_run(data_dir: Path) -> None:
    splits = load_splits("langid", data_dir, train_limit=3000, val_limit=500, test_limit=500)
    model = ngram(splits.train, NgramConfig(budget_bytes=32_000, epochs=3),
                  val_data=splits.val)
    assert len(model.classes) == 19 and model.net.nbytes() <= 32_000


@pytest.mark.data
def test_real_pos_loader(data_dir: Path) -> None:
    train = load_splits("pos-turkish", data_dir, val_fraction=0.1)
    assert len(train.train) + len(train.val) + len(train.test) == 2541  # the web treebank
