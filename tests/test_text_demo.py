from pathlib import Path
from types import SimpleNamespace

import pytest
from test_text_recipe import _write_langid

from frugalnn.methods.text import demo
from frugalnn.plugins import plugin_modules


def _ctx(tmp_path: Path, data_dir: Path | None) -> SimpleNamespace:
    out = tmp_path / "demo"
    out.mkdir(exist_ok=True)

    def run_dir(name: str) -> Path:
        (out / name).mkdir()
        return out / name

    return SimpleNamespace(data_dir=data_dir, quick=True, seed=0, threads=1, progress=False,
                           run_dir=run_dir)


def test_text_hook_is_listed_and_skips_without_data(tmp_path: Path, capsys,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert "frugalnn.methods.text.demo" in plugin_modules("demo")
    monkeypatch.delenv("FRUGALNN_DATA", raising=False)
    assert demo.run_demo(_ctx(tmp_path, None)) == []
    assert demo.run_demo(_ctx(tmp_path, tmp_path / "empty")) == []
    assert "skipped (no langid data" in capsys.readouterr().out
    assert not any((tmp_path / "demo").iterdir())


def test_text_hook_trains_a_16kb_model_with_data(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "QUICK_LIMITS", (60, 20, 20))
    assert demo.run_demo(_ctx(tmp_path, _write_langid(tmp_path / "data"))) == []
    run = tmp_path / "demo" / "text-langid-16kb"
    for name in ("model.pt", "records.csv", "extras/text.json", "report"):
        assert (run / name).exists(), name
