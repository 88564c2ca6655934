"""Your own model, weights and data: model specs (``file.py:factory``,
``package.module:factory``, ``hf:DIR``), plain state-dict files, run directories that
rebuild such models in a new process, and the ``textfile`` / ``imagefolder`` datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from frugalnn.cli import main
from frugalnn.data import get_dataset
from frugalnn.errors import UserError
from frugalnn.evaluation import load_records
from frugalnn.models import create_model, model_info
from frugalnn.models.external import load_state_file, load_weights_file
from frugalnn.models.registry import model_kwargs_for
from frugalnn.train.checkpoint import load_meta, load_model, save_checkpoint

REPO = Path(__file__).resolve().parents[1]

FACTORY = textwrap.dedent("""
    from torch import nn

    def make(num_classes=10, width=8):
        return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                             nn.Linear(4 * width, num_classes))
    make.input_shape = (1, 8, 8)

    def not_a_module():
        return 3

    def broken():
        raise RuntimeError("needs a GPU")
""")


@pytest.fixture
def factory(tmp_path: Path) -> Path:
    path = tmp_path / "user" / "mynet.py"
    path.parent.mkdir()
    path.write_text(FACTORY)
    return path


@pytest.fixture
def weights(factory: Path, tmp_path: Path) -> Path:
    torch.manual_seed(3)
    model = create_model(f"{factory}:make")
    path = tmp_path / "w.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def _probe() -> torch.Tensor:
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("frugalnn: error:") and "\n" not in err and "Traceback" not in err
    return err


# ------------------------------------------------------------------ specs


def test_file_and_module_factories_build_and_record_their_spec(factory: Path) -> None:
    model = create_model(f"{factory}:make", num_classes=3)
    assert model(_probe()).shape == (4, 3)
    spec = model.frugalnn_spec
    assert spec["name"] == spec["factory"] == f"{factory.resolve()}:make"
    assert spec["kwargs"] == {"num_classes": 3} and len(spec["sha256"]) == 64
    info = model_info(f"{factory}:make")
    assert info.input_shape == (1, 8, 8) and info.input_dtype == "float"
    # The dataset's class count reaches a factory that takes num_classes.
    from frugalnn.data import dataset_info

    assert model_kwargs_for(f"{factory}:make", dataset_info("digits"), {}) == {"num_classes": 10}
    # package.module:factory
    linear = create_model("torch.nn:Linear", in_features=3, out_features=2)
    assert isinstance(linear, nn.Linear) and linear.frugalnn_spec["name"] == "torch.nn:Linear"


@pytest.mark.parametrize("spec, message", [
    ("{dir}/nope.py:make", "does not exist"),
    ("{dir}/mynet.py:nope", "has no 'nope' (callables there: broken, make, not_a_module)"),
    ("{dir}/mynet.py:not_a_module", "returned 'int', not a torch.nn.Module"),
    ("{dir}/mynet.py:broken", "the factory raised RuntimeError: needs a GPU"),
    ("no_such_package_xyz.models:make", "no module named 'no_such_package_xyz'"),
    ("{dir}/mynet.py", "name the function that builds the model"),
])
def test_bad_specs_are_one_line(factory: Path, spec: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        create_model(spec.format(dir=factory.parent))
    assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="bad arguments"):
        create_model(f"{factory}:make", depth=3)


# ------------------------------------------------------------------ weights


def test_state_dict_files_load_the_same_weights(factory: Path, weights: Path,
                                                tmp_path: Path) -> None:
    torch.manual_seed(3)
    original = create_model(f"{factory}:make").eval()
    state = original.state_dict()
    # .pt holding {"state_dict": ...} saved from a DataParallel model ("module." keys).
    pt = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, pt)
    plain = tmp_path / "plain.pth"
    torch.save(state, plain)
    folder = tmp_path / "folder"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    x = _probe()
    for source in (weights, pt, plain, folder):
        torch.manual_seed(99)  # other random weights until the file is loaded
        model = create_model(f"{factory}:make").eval()
        assert not torch.equal(model(x), original(x))
        load_weights_file(model, source)
        assert torch.equal(model(x), original(x)), source
        assert Path(model.frugalnn_spec["weights"]).is_absolute()


def test_mismatched_weights_name_the_keys(factory: Path, tmp_path: Path) -> None:
    state = create_model(f"{factory}:make").state_dict()
    state.pop("4.bias")
    state["extra.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(16, 1, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(UserError) as err:
        load_weights_file(create_model(f"{factory}:make"), path)
    text = str(err.value)
    assert "missing 4.bias" in text and "unexpected extra.weight" in text
    assert "0.weight (16, 1, 3, 3) vs (8, 1, 3, 3)" in text and "\n" not in text
    many = {f"layer{i}.weight": torch.zeros(1) for i in range(7)}
    save_file(many, str(path))
    with pytest.raises(UserError, match=r"unexpected layer0.weight, layer1.weight, "
                                        r"layer2.weight, \.\.\. \(7 in all\)"):
        load_weights_file(create_model(f"{factory}:make"), path)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": Path("x")}, path)
    with pytest.raises(UserError, match="cannot be read as a state dict"):
        load_state_file(path)
    torch.save([torch.zeros(1)], path)
    with pytest.raises(UserError, match="does not hold a state dict"):
        load_state_file(path)


# ------------------------------------------------------------------ checkpoints


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_checkpoint_rebuilds_a_factory_model_in_a_new_process(factory: Path, weights: Path,
                                                              tmp_path: Path) -> None:
    model = create_model(f"{factory}:make")
    load_weights_file(model, weights)
    ckpt = save_checkpoint(tmp_path / "ckpt", model)
    meta = load_meta(ckpt)["model"]
    assert meta["factory"] == f"{factory.resolve()}:make"
    assert meta["weights"] == str(weights.resolve())
    x = _probe()
    torch.save(x, tmp_path / "x.pt")
    # Another process, another working directory, the factory's folder not on sys.path.
    done = _run_python(
        "import torch; from frugalnn.train.checkpoint import load_model; "
        f"m = load_model({str(ckpt)!r}); "
        f"torch.save(m(torch.load({str(tmp_path / 'x.pt')!r})), 'y.pt')", tmp_path)
    assert done.returncode == 0, done.stderr
    assert torch.equal(torch.load(tmp_path / "y.pt"), model.eval()(x))


def test_changed_or_vanished_factory_file_is_one_line(factory: Path, tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "ckpt", create_model(f"{factory}:make"))
    factory.write_text(FACTORY + "\n# a comment changes the bytes, not the model\n")
    with pytest.warns(UserWarning, match="changed since the checkpoint was saved"):
        load_model(ckpt)
    factory.write_text(FACTORY.replace("width=8", "width=6"))
    with pytest.raises(UserError, match="changed since the checkpoint was saved and no longer "
                                        "builds the same model") as err:
        load_model(ckpt)
    assert "\n" not in str(err.value)
    factory.unlink()
    with pytest.raises(UserError, match="which no longer exists") as err:
        load_model(ckpt)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ CLI


def _eval_args(out: Path, *model: str) -> list[str]:
    return ["evaluate", *model, "--data", "digits", "--eval-limit", "40", "--val-limit", "20",
            "--latency-batch-sizes", "none", "--no-progress", "--threads", "1",
            "--out", str(out)]


def test_cli_evaluate_and_profile_your_model(factory: Path, weights: Path,
                                                       tmp_path: Path, capsys) -> None:
    spec = f"{factory}:make"
    first = tmp_path / "eval"
    assert main(_eval_args(first, "--model", spec, "--weights", str(weights))) == 0
    saved = load_meta(first / "checkpoint")["model"]
    assert saved["factory"] == f"{factory.resolve()}:make"
    # The run directory alone rebuilds the model (in a new process: the slow test below).
    again = tmp_path / "again"
    assert main(_eval_args(again, str(first))) == 0
    a, b = load_records(first).columns, load_records(again).columns
    for column in ("example_id", "pred", "loss", "flops"):
        assert np.array_equal(a[column], b[column]), column
    # profile: by spec + weights, and by the run directory.
    capsys.readouterr()
    assert main(["profile", spec, "--weights", str(weights), "--no-timing"]) == 0
    # Conv2d(1, 8, 3): 72 + 8, Linear(32, 10): 320 + 10.
    assert "parameters:        410" in capsys.readouterr().out
    assert main(["profile", str(first), "--no-timing"]) == 0
    assert "input (1, 8, 8)" in capsys.readouterr().out


def test_cli_train_starts_from_your_weights(factory: Path, weights: Path,
                                           tmp_path: Path) -> None:
    run = tmp_path / "train"
    assert main(["train", "--model", f"{factory}:make", "--weights", str(weights), "--data",
                 "digits", "--epochs", "1", "--train-limit", "32", "--eval-limit", "16",
                 "--lr", "1e-12", "--weight-decay", "0", "--no-progress", "--threads", "1",
                 "--out", str(run)]) == 0
    spec = load_meta(run / "checkpoint")["model"]
    assert spec["factory"] == f"{factory.resolve()}:make"
    assert spec["weights"] == str(weights.resolve())
    start = create_model(f"{factory}:make")
    load_weights_file(start, weights)
    x = _probe()  # a learning rate of 1e-12: the trained weights are the given ones
    assert torch.allclose(load_model(run / "checkpoint")(x), start.eval()(x), atol=1e-6)
    assert not torch.allclose(create_model(f"{factory}:make").eval()(x), start(x), atol=1e-3)


@pytest.mark.slow
def test_cli_runs_on_your_model_reload_in_new_processes(factory: Path, weights: Path,
                                                        tmp_path: Path) -> None:
    """``evaluate`` and a method command on the spec; their run directories are read
    by commands in other processes, with identical outputs."""
    spec = f"{factory}:make"
    first = tmp_path / "eval"
    assert main(_eval_args(first, "--model", spec, "--weights", str(weights))) == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}
    again = tmp_path / "again"
    done = subprocess.run([sys.executable, "-m", "frugalnn.cli", *_eval_args(again, str(first))],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    a, b = load_records(first).columns, load_records(again).columns
    for column in ("example_id", "pred", "loss", "flops"):
        assert np.array_equal(a[column], b[column]), column
    run = tmp_path / "lowrank"
    assert main(["lowrank", "compress", spec, "--random-init", "--method", "svd",
                 "--target", "rank=2", "--data", "digits", "--train-limit", "64",
                 "--val-limit", "16", "--eval-limit", "32", "--finetune-epochs", "1",
                 "--latency-batch-sizes", "none", "--no-progress", "--threads", "1",
                 "--out", str(run)]) == 0
    compressed = load_model(run / "checkpoint")
    assert load_meta(run / "checkpoint")["model"]["name"] == f"{factory.resolve()}:make"
    x = _probe()
    torch.save(x, tmp_path / "x.pt")
    done = _run_python(
        "import torch; from frugalnn.train.checkpoint import load_model; "
        f"m = load_model({str(run / 'checkpoint')!r}); "
        f"torch.save(m(torch.load({str(tmp_path / 'x.pt')!r})), 'y.pt')", tmp_path)
    assert done.returncode == 0, done.stderr
    assert torch.equal(torch.load(tmp_path / "y.pt"), compressed(x))


def test_weights_flag_goes_with_model_in_any_order(factory: Path, weights: Path) -> None:
    from frugalnn.cli import build_parser

    parser = build_parser()
    for argv in (["prune", f"{factory}:make", "--weights", str(weights)],
                 ["prune", "--weights", str(weights), f"{factory}:make"]):
        args = parser.parse_args([*argv, "--data", "digits", "--out", "x"])
        assert args.model == f"{factory}:make" and args.model.weights == str(weights)


def _bad_weights(factory: Path, tmp_path: Path) -> list[str]:
    path = tmp_path / "bad.safetensors"
    save_file({"0.weight": torch.zeros(2, 1, 3, 3)}, str(path))
    return ["--model", f"{factory}:make", "--weights", str(path)]


@pytest.mark.parametrize("case, message", [
    ("no_file", "does not exist"),
    ("no_factory", "has no 'nope'"),
    ("not_module", "not a torch.nn.Module"),
    ("weights", "missing 0.bias, 4.weight, 4.bias"),
    ("no_weights_file", "--weights"),
])
def test_cli_bad_inputs_exit_2_and_write_nothing(case: str, message: str, factory: Path,
                                                 tmp_path: Path, capsys) -> None:
    model = {
        "no_file": ["--model", f"{factory.parent}/missing.py:make"],
        "no_factory": ["--model", f"{factory}:nope"],
        "not_module": ["--model", f"{factory}:not_a_module"],
        "weights": _bad_weights(factory, tmp_path),
        "no_weights_file": ["--model", f"{factory}:make", "--weights", str(tmp_path / "x.pt")],
    }[case]
    out = tmp_path / "out"
    err = _one_line_error(capsys, main(_eval_args(out, *model)))
    assert message in err
    assert "0.weight (2, 1, 3, 3) vs (8, 1, 3, 3)" in err or case != "weights"
    assert not out.exists()
    json_out = tmp_path / "profile.json"
    spec, weights = model[1], model[3:4]
    code = main(["profile", spec, *(["--weights", *weights] if weights else []), "--no-timing",
                 "--json", str(json_out)])
    assert message in _one_line_error(capsys, code) and not json_out.exists()


def test_cli_bad_csv_column_exits_2(factory: Path, tmp_path: Path, capsys) -> None:
    csv_file = tmp_path / "reviews.csv"
    csv_file.write_text("review,label\ngood,pos\nbad,neg\n")
    out = tmp_path / "out"
    code = main(["evaluate", "--model", f"{factory}:make", "--data", "textfile",
                 "--data-dir", str(csv_file), "--out", str(out), "--no-progress"])
    err = _one_line_error(capsys, code)
    assert "has no column 'text' (columns: review, label); name it with text_column=" in err
    assert not out.exists()


# ------------------------------------------------------------------ Hugging Face


@pytest.fixture
def hf_bert(tmp_path: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    directory = tmp_path / "bert"
    directory.mkdir()
    words = ["the", "movie", "is", "good", "great", "bad", "awful"]
    (directory / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = transformers.BertTokenizer(str(directory / "vocab.txt"))
    config = transformers.BertConfig(vocab_size=12, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=32, num_labels=3)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_hf_directory_builds_its_architecture_and_round_trips(hf_bert: Path,
                                                              tmp_path: Path) -> None:
    import transformers

    original = transformers.BertForSequenceClassification.from_pretrained(hf_bert).eval()
    model = create_model(f"hf:{hf_bert}").eval()
    assert type(model) is transformers.BertForSequenceClassification
    assert model.frugalnn_spec["hf_dir"] == str(hf_bert.resolve())
    info = model_info(f"hf:{hf_bert}")
    assert info.input_shape == (32,) and info.input_dtype == "long"
    batch = {"input_ids": torch.tensor([[2, 5, 6, 7, 8, 3]]),
             "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    expected = original(**batch).logits
    assert torch.allclose(model(**batch).logits, expected, atol=1e-6)
    ckpt = save_checkpoint(tmp_path / "ckpt", model)
    assert torch.allclose(load_model(ckpt)(**batch).logits, expected, atol=1e-6)
    from frugalnn.models.registry import comes_trained

    assert comes_trained(f"hf:{hf_bert}")  # the directory brings its weights
    assert not comes_trained(f"hf:{tmp_path}") and not comes_trained("cnn_small")
    with pytest.raises(UserError, match="has no config.json"):
        create_model(f"hf:{tmp_path}")
    with pytest.raises(UserError, match=r"a Hugging Face model directory is given as hf:"):
        create_model(str(hf_bert))


# ------------------------------------------------------------------ textfile


def _write_reviews(tmp_path: Path) -> tuple[Path, Path]:
    rows = [("the movie is good", "pos"), ("the movie is awful", "neg"),
            ("great", "pos"), ("bad bad", "neg"), ("the movie", "meh")]
    csv_file = tmp_path / "reviews.csv"
    csv_file.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    jsonl = tmp_path / "reviews.jsonl"
    jsonl.write_text("".join(json.dumps({"review": t, "stars": label}) + "\n"
                             for t, label in rows))
    return csv_file, jsonl


def test_textfile_csv_and_jsonl_map_labels(tmp_path: Path) -> None:
    csv_file, jsonl = _write_reviews(tmp_path)
    ds = get_dataset("textfile", "train", csv_file)
    assert ds.info.classes == ("meh", "neg", "pos") and ds.info.num_classes == 3
    assert ds[0] == ("the movie is good", torch.tensor(2)) and len(ds) == 5
    same = get_dataset("textfile:text_column=review,label_column=stars", "test", jsonl)
    assert same.texts == ds.texts and torch.equal(same.labels, ds.labels)
    numbered = tmp_path / "numbered.jsonl"
    numbered.write_text('{"text": "a", "label": 3}\n{"text": "b", "label": 0}\n')
    ids = get_dataset("textfile", "train", numbered)
    assert ids.labels.tolist() == [3, 0] and ids.info.num_classes == 4
    # One file per split: labels mapped over all files, so the splits agree.
    folder = tmp_path / "splits"
    folder.mkdir()
    (folder / "train.csv").write_text("text,label\nx,b\ny,c\n")
    (folder / "test.csv").write_text("text,label\nz,a\n")
    train, test = (get_dataset("textfile", s, folder) for s in ("train", "test"))
    assert train.info.classes == test.info.classes == ("a", "b", "c")
    assert train.labels.tolist() == [1, 2] and test.labels.tolist() == [0]
    with pytest.raises(UserError, match="no file for split 'val'"):
        get_dataset("textfile", "val", folder)
    with pytest.raises(UserError, match="has no column 'body'"):
        get_dataset("textfile:text_column=body", "train", csv_file)
    with pytest.raises(UserError, match="takes no option"):
        get_dataset("textfile:colour=red", "train", csv_file)


def test_textfile_tokenised_batches_are_hf_dicts(hf_bert: Path, tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from frugalnn.utils.batch import split_batch

    csv_file, _ = _write_reviews(tmp_path)
    ds = get_dataset(f"textfile:tokenizer={hf_bert},max_length=8", "train", csv_file)
    assert ds.info.input_shape == (8,) and ds.info.input_dtype == "long"
    batch = next(iter(DataLoader(ds, batch_size=5)))
    x, y = split_batch(batch)
    assert x["input_ids"].shape == (5, 8) and y.tolist() == [2, 1, 2, 1, 0]
    # [CLS] the movie is good [SEP], then padding the mask leaves out.
    assert x["input_ids"][0, :6].tolist() == [2, 5, 6, 7, 8, 3]
    assert x["attention_mask"][0].tolist() == [1] * 6 + [0] * 2
    model = create_model(f"hf:{hf_bert}").eval()
    assert model(**x).logits.shape == (5, 3)


def test_cli_evaluates_hf_model_on_your_csv(hf_bert: Path, tmp_path: Path, capsys) -> None:
    """``--model hf:DIR`` on ``--data textfile``: the directory's tokenizer makes the
    batches; the run directory evaluates again (data spec and model recorded)."""
    csv_file, _ = _write_reviews(tmp_path)
    first, again = tmp_path / "eval", tmp_path / "again"
    common = ["--data", "textfile", "--data-dir", str(csv_file), "--val-fraction", "0",
              "--latency-batch-sizes", "none", "--no-progress", "--threads", "1"]
    assert main(["evaluate", "--model", f"hf:{hf_bert}", *common, "--out", str(first)]) == 0
    config = json.loads((first / "config.json").read_text())
    assert config["data"] == f"textfile:tokenizer={hf_bert.resolve()},max_length=32"
    assert load_meta(first / "checkpoint")["data"]["classes"] == ["meh", "neg", "pos"]
    assert main(["evaluate", str(first), *common, "--out", str(again)]) == 0
    a, b = load_records(first).columns, load_records(again).columns
    assert len(a["pred"]) == 5 and np.array_equal(a["pred"], b["pred"])
    assert np.allclose(a["loss"], b["loss"], atol=1e-6)
    two = tmp_path / "two.csv"
    two.write_text("text,label\ngood,pos\nbad,neg\n")
    capsys.readouterr()
    code = main(["evaluate", "--model", f"hf:{hf_bert}", *common[:2], "--data-dir", str(two),
                 *common[4:], "--out", str(tmp_path / "two")])
    assert "has 3 labels but the dataset given has 2 classes" in _one_line_error(capsys, code)
    assert not (tmp_path / "two").exists()


def test_cli_lowrank_compresses_hf_model_on_your_csv(hf_bert: Path, tmp_path: Path) -> None:
    """``lowrank compress hf:DIR --data textfile``: dict batches through the data-aware
    calibration, the accuracy and latency comparison, and a reload in this process."""
    csv_file, _ = _write_reviews(tmp_path)
    run = tmp_path / "lowrank"
    assert main(["lowrank", "compress", f"hf:{hf_bert}", "--method", "svd", "--target",
                 "rank=4", "--include", "bert.encoder.*", "--data-aware",
                 "--calibration-examples", "4", "--data", "textfile", "--data-dir",
                 str(csv_file), "--val-fraction", "0", "--finetune-epochs", "0",
                 "--latency-batch-sizes", "1", "--latency-repeats", "2", "--no-progress",
                 "--threads", "1", "--out", str(run)]) == 0
    compressed = load_model(run / "checkpoint").eval()
    layer = compressed.get_submodule("bert.encoder.layer.0.intermediate.dense")
    assert type(layer).__name__ == "SVDLinear"
    assert "data-aware" in (run / "extras" / "lowrank_layers.md").read_text()
    assert "accuracy (%)" in (run / "extras" / "lowrank_model.md").read_text()
    batch = {"input_ids": torch.tensor([[2, 5, 6, 7, 8, 3]]),
             "attention_mask": torch.ones(1, 6, dtype=torch.long)}
    assert torch.isfinite(compressed(**batch).logits).all()


@pytest.mark.parametrize("command", [
    ["quant", "--mode", "dynamic", "--latency-batch-sizes", "1"],
    ["binary", "--word-bits", "32", "--latency-batch-sizes", "1"],
    ["acm", "convert", "--distill-epochs", "1", "--gate-epochs", "1"],
    ["early-exit", "train", "--epochs", "1", "--latency-batch-sizes", "1"],
    ["moe", "convert", "--experts", "4", "--router-epochs", "1"],
    ["prune", "--target", "flops=1.5", "--epochs", "0", "--latency-batch-sizes", "1"],
])
def test_cli_methods_run_on_hf_model_and_your_csv(command: list[str], hf_bert: Path,
                                                  tmp_path: Path) -> None:
    """Each method's command on ``hf:DIR`` with ``--data textfile``: token-dict batches
    through its comparison, calibration and report steps, one checkpoint written."""
    csv_file, _ = _write_reviews(tmp_path)
    out = tmp_path / "run"
    model = (["--model", f"hf:{hf_bert}"] if command[0] == "early-exit"
             else [f"hf:{hf_bert}"])
    assert main([*command, *model, "--data", "textfile", "--data-dir", str(csv_file),
                 "--no-progress", "--threads", "1", "--out", str(out)]) == 0
    assert (out / "checkpoint").is_dir() and (out / "records.csv").is_file()


def test_cli_sparsity_tokenises_your_csv_for_hf_model(hf_bert: Path, tmp_path: Path) -> None:
    csv_file, _ = _write_reviews(tmp_path)
    out = tmp_path / "sparsity"
    assert main(["sparsity", f"hf:{hf_bert}", "--data", "textfile", "--data-dir",
                 str(csv_file), "--out", str(out)]) == 0
    assert "gelu" in (out / "sparsity.md").read_text()


# ------------------------------------------------------------------ imagefolder


def test_imagefolder_resizes_and_normalises(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    monkeypatch.setenv("FRUGALNN_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("test", 1)):
        for cls in ("cat", "dog"):
            folder = tmp_path / "imgs" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):  # sizes differ: only image_size makes them one array
                size = (20 + 4 * i, 12 + 2 * i)
                pixels = rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    with pytest.raises(UserError, match="differ in size"):
        get_dataset("imagefolder", "train", tmp_path / "imgs")
    ds = get_dataset("imagefolder:image_size=8,normalize=none", "train", tmp_path / "imgs")
    assert ds.images.shape == (4, 3, 8, 8) and ds.classes == ["cat", "dog"]
    x, _ = ds[0]
    assert torch.allclose(x, ds.images[0].float() / 255)  # normalize=none: pixels / 255
    net = get_dataset("imagefolder:image_size=8,normalize=imagenet", "test", tmp_path / "imgs")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(net[0][0], (net.images[0].float() / 255 - mean) / std)
    with pytest.raises(UserError, match="normalize must be one of"):
        get_dataset("imagefolder:normalize=zca", "train", tmp_path / "imgs")


def test_method_run_records_its_data_so_profile_needs_no_shape(tmp_path: Path, capsys) -> None:
    # A factory that does not declare its input shape: the method's run directory records
    # the data it ran on, and `profile RUN` reads the shape from there.
    path = tmp_path / "plain.py"
    path.write_text(FACTORY.replace("    make.input_shape = (1, 8, 8)\n", ""))
    spec = f"{path}:make"
    torch.manual_seed(0)
    w = tmp_path / "plain.safetensors"
    save_file(create_model(spec).state_dict(), str(w))
    run = tmp_path / "lr"
    assert main(["lowrank", "compress", spec, "--weights", str(w), "--method", "svd",
                 "--target", "rank=2", "--finetune-epochs", "0", "--data", "digits",
                 "--train-limit", "64", "--val-limit", "32", "--eval-limit", "32",
                 "--latency-batch-sizes", "1", "--latency-repeats", "1", "--no-progress",
                 "--threads", "1", "--out", str(run)]) == 0
    assert load_meta(run / "checkpoint")["data"]["input_shape"] == [1, 8, 8]
    capsys.readouterr()
    assert main(["profile", str(run), "--no-timing"]) == 0
    assert "input (1, 8, 8)" in capsys.readouterr().out
