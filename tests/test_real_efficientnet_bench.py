"""benchmarks/real_efficientnet.py: the input-resolution baseline's data and arguments."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from bench_scripts import load_benchmark

from frugalnn.data.pretrained_eval import ResizedImages

bench = load_benchmark("real_efficientnet")


def test_resized_keeps_pixels_and_labels_and_changes_only_the_size() -> None:
    pixels = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    data = ResizedImages(pixels, torch.tensor([4, 1, 7]), 224, description="toy at 224x224")
    small = bench.resized(data, 160)
    assert small.size == 160 and small.labels.tolist() == [4, 1, 7]
    assert small.info.description == "toy at 160x160"
    x = small.prepare(small.images)
    assert x.shape == (3, 3, 160, 160)
    # straight from the stored 32x32 pixels, not from the 224 version
    direct = torch.nn.functional.interpolate(pixels.float(), size=(160, 160), mode="bilinear",
                                             align_corners=False)
    torch.testing.assert_close(x, (direct - data.mean) / data.std)
    assert small.info.input_shape == (3, 160, 160)


@pytest.mark.parametrize("size", ["16", "300"])
def test_resolution_out_of_range_is_an_argument_error(size: str) -> None:
    with pytest.raises(SystemExit) as err:
        bench.main(["--method", "resolution", "--resolutions", "184", size])
    assert err.value.code == 2


def test_choose_on_val_takes_the_cheapest_row_over_the_bar_else_the_best() -> None:
    rows = [{"name": "a", "flops": 3.0, "val": [0.99]}, {"name": "b", "flops": 2.0,
                                                        "val": [0.96, 0.95]},
            {"name": "c", "flops": 1.0, "val": [0.80]}]
    chosen, mark = bench.choose_on_val(rows, 0.95)
    assert chosen["name"] == "b" and mark == " (chosen)"
    chosen, mark = bench.choose_on_val(rows, 0.999)
    assert chosen["name"] == "a" and "none reached" in mark


def test_agreement_table_marks_only_the_chosen_row() -> None:
    photos = ResizedImages(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4), 8)
    rows = [{"name": "184x184", "flops": 5e8, "val": [0.9], "test": [0.85], "photos": 0.5},
            {"name": "160x160", "flops": 4e8, "val": [0.8], "test": [0.75], "photos": 0.25}]
    lines = bench.agreement_table(rows, rows[0], " (chosen)", "dense", 1e9, photos, 0.75)
    assert lines[2] == "| dense | 1.000 | 1.00x | 100 | 100 | 3/4 |"
    assert lines[3] == "| 184x184 (chosen) | 0.500 | 2.00x | 90.0 | 85.0 | 2/4 |"
    assert lines[4] == "| 160x160 | 0.400 | 2.50x | 80.0 | 75.0 | 1/4 |"


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite_pytorch") is None,
                    reason="needs `make efficientnet`")
def test_at_input_size_keeps_the_weights_and_pads_for_the_new_size() -> None:
    import frugalnn

    dense = frugalnn.create_model("efficientnet_lite0")
    x = torch.randn(2, 3, 224, 224)
    same = bench.at_input_size(dense, 224)
    with torch.inference_mode():
        torch.testing.assert_close(same(x), dense(x), rtol=0, atol=0)
        small = bench.at_input_size(dense, 184)
        # TF "same" padding: the last feature map is ceil(184 / 32) = 6 wide; the model built
        # for 224 pads two stride-2 layers for 224's maps and ends at 5
        assert small.extract_features(torch.zeros(1, 3, 184, 184)).shape[-2:] == (6, 6)
        assert dense.extract_features(torch.zeros(1, 3, 184, 184)).shape[-2:] == (5, 5)
