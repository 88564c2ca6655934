"""The op table: which dispatched aten ops are multiply-adds, and their FLOPs.

:class:`torch.utils.flop_counter.FlopCounterMode` knows ``mm``, ``addmm``,
``bmm``, ``baddbmm``, ``convolution`` and the GPU attention kernels. Stock
``torch.nn`` layers run more multiply-add kernels than that, depending on the
mode: in eval mode under ``torch.no_grad()`` ``nn.TransformerEncoderLayer`` and
``nn.MultiheadAttention`` take fused fast paths, ``nn.LSTM`` runs the oneDNN
kernel on CPU, ``nn.Bilinear`` lowers to ``_trilinear``, ``torch.mv`` /
``dot`` / ``addmv`` / ``addr`` / ``addbmm`` are their own kernels. Every such
op is one row of :data:`FORMULAS` below (op name -> FLOPs from its arguments,
one multiply-add = 2 FLOPs, bias additions not counted).

Every other op that does arithmetic is sorted into one of two kinds:

* **cheap** (:func:`is_cheap`): elementwise ops (the ``pointwise`` tag),
  reductions (the ``reduction`` tag), normalisation, softmax, pooling,
  interpolation, quantise/dequantise: not multiply-adds, not counted, listed
  by name in ``CostReport.uncounted``;
* **unknown**: anything else (an op with arithmetic this table does not
  know, such as a custom kernel or a new fused layer): counted as 0 and
  reported loudly, because it may be where the model spends its time.

Ops that only move or create data (views, copies, indexing, random numbers)
are neither (:data:`NO_ARITHMETIC`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import conv_flop_count, flop_registry

__all__ = [
    "FORMULAS",
    "NO_ARITHMETIC",
    "CHEAP",
    "extra_flop_mapping",
    "is_cheap",
    "is_free",
]

aten = torch.ops.aten

FlopFormula = Callable[..., int]


def _rows(x: torch.Tensor) -> int:
    """Number of vectors along the last dimension (tokens x batch)."""
    return x.numel() // x.shape[-1] if x.dim() else 1


def _sdpa(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    """softmax(Q K^T) V: ``2*B*H*Tq*Tk*d`` for Q K^T plus ``2*B*H*Tq*Tk*d_v`` for A V."""
    batch = math.prod(query.shape[:-2])
    tq, d = query.shape[-2], query.shape[-1]
    return 2 * batch * tq * key.shape[-2] * (d + value.shape[-1])


def _mv(mat: torch.Tensor, vec: torch.Tensor, *args: Any, **kwargs: Any) -> int:
    return 2 * mat.shape[0] * mat.shape[1]


def _addmv(bias: Any, mat: torch.Tensor, vec: torch.Tensor, *args: Any, **kwargs: Any) -> int:
    return _mv(mat, vec)


def _dot(a: torch.Tensor, b: torch.Tensor, *args: Any, **kwargs: Any) -> int:
    return 2 * a.numel()


def _addr(bias: Any, v1: torch.Tensor, v2: torch.Tensor, *args: Any, **kwargs: Any) -> int:
    return 2 * v1.numel() * v2.numel()


def _addbmm(bias: Any, b1: torch.Tensor, b2: torch.Tensor, *args: Any, **kwargs: Any) -> int:
    b, n, k = b1.shape
    return 2 * b * n * k * b2.shape[-1]


def _mm_like(a: torch.Tensor, b: torch.Tensor, *args: Any, **kwargs: Any) -> int:
    return 2 * _rows(a) * a.shape[-1] * b.shape[-1]


def _addmm_like(bias: Any, a: torch.Tensor, b: torch.Tensor, *args: Any, **kwargs: Any) -> int:
    return _mm_like(a, b)


def _linear_weight(x: torch.Tensor, w: torch.Tensor, *args: Any, **kwargs: Any) -> int:
    """``x @ w.T`` with ``w`` of shape (out, in) (mkldnn_linear)."""
    return 2 * _rows(x) * w.shape[0] * w.shape[1]


def _cdist(x1: torch.Tensor, x2: torch.Tensor, *args: Any, **kwargs: Any) -> int:
    """Pairwise distances: one multiply-add per pair and feature."""
    batch = math.prod(x1.shape[:-2])
    return 2 * batch * x1.shape[-2] * x2.shape[-2] * x1.shape[-1]


def _trilinear(i1: torch.Tensor, i2: torch.Tensor, i3: torch.Tensor,
               expand1: Sequence[int], expand2: Sequence[int], expand3: Sequence[int],
               *args: Any, **kwargs: Any) -> int:
    """``nn.Bilinear``'s kernel: one multiply-add per point of the joint index space
    (``N * out * in1 * in2`` for ``Bilinear(in1, in2, out)``)."""
    ndim = i1.dim() + len(expand1)
    sizes = [1] * ndim
    for tensor, expand in ((i1, expand1), (i2, expand2), (i3, expand3)):
        shape = list(tensor.shape)
        for dim in sorted(expand):
            shape.insert(dim, 1)
        sizes = [max(s, t) for s, t in zip(sizes, shape)]
    return 2 * math.prod(sizes)


def _embedding_bag(weight: torch.Tensor, indices: torch.Tensor, offsets: Any = None,
                   scale_grad_by_freq: bool = False, mode: int = 0, sparse: bool = False,
                   per_sample_weights: Any = None, *args: Any, **kwargs: Any) -> int:
    """Weighted bags are multiply-adds (``n_indices * dim``); plain sum/mean/max bags are
    additions or comparisons only and count 0, like an embedding lookup."""
    if per_sample_weights is None:
        return 0
    return 2 * indices.numel() * weight.shape[-1]


def _conv(transposed: bool) -> FlopFormula:
    def formula(x: torch.Tensor, w: torch.Tensor, *args: Any, out_val: Any = None,
                **kwargs: Any) -> int:
        out = out_val[0] if isinstance(out_val, (tuple, list)) else out_val
        return int(conv_flop_count(list(x.shape), list(w.shape), list(out.shape), transposed))

    return formula


def _rnn_steps(x: torch.Tensor) -> int:
    """Time steps x batch of an RNN input (a packed input is already 2-D)."""
    return _rows(x)


def _mkldnn_rnn_layer(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
                      *args: Any, **kwargs: Any) -> int:
    """One layer, one direction of an LSTM/GRU/RNN: both gate products at every step."""
    return 2 * _rnn_steps(x) * (w_ih.numel() + w_hh.numel())


def _cudnn_rnn(x: torch.Tensor, weights: Sequence[torch.Tensor], *args: Any,
               **kwargs: Any) -> int:
    """Every layer and direction: each 2-D weight (input, hidden, projection) at every step."""
    return 2 * _rnn_steps(x) * sum(w.numel() for w in weights if w.dim() == 2)


def _seq_lengths(x: torch.Tensor) -> list[int]:
    """Per-sequence lengths of a (batch, length, embed) input, nested tensors included."""
    if x.is_nested:
        return [int(n) for n in x._nested_tensor_size()[:, 0].tolist()]
    if x.dim() == 2:
        return [x.shape[0]]
    return [x.shape[1]] * x.shape[0]


def _encoder_layer_fwd(src: torch.Tensor, embed_dim: int, num_heads: int,
                       qkv_weight: torch.Tensor, qkv_bias: Any, proj_weight: torch.Tensor,
                       proj_bias: Any, use_gelu: bool, norm_first: bool, eps: float,
                       nw1: Any, nb1: Any, nw2: Any, nb2: Any, ffn_weight_1: torch.Tensor,
                       ffn_bias_1: Any, ffn_weight_2: torch.Tensor, *args: Any,
                       **kwargs: Any) -> int:
    """``nn.TransformerEncoderLayer``'s fused fast path: the QKV, output and two FFN
    projections for every token, plus attention over each sequence's own length."""
    lengths = _seq_lengths(src)
    tokens = sum(lengths)
    weights = qkv_weight.numel() + proj_weight.numel() + ffn_weight_1.numel()
    weights += ffn_weight_2.numel()
    return 2 * tokens * weights + 4 * embed_dim * sum(n * n for n in lengths)


def _native_mha(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, embed_dim: int,
                num_head: int, qkv_weight: torch.Tensor, qkv_bias: Any,
                proj_weight: torch.Tensor, *args: Any, **kwargs: Any) -> int:
    """``nn.MultiheadAttention``'s fused fast path: Q from the queries, K and V from the
    keys, attention, output projection."""
    lq, lk = _seq_lengths(query), _seq_lengths(key)
    nq, nk = sum(lq), sum(lk)
    e = embed_dim
    projections = 2 * e * e * (nq + 2 * nk) + 2 * nq * proj_weight.numel()
    return projections + 4 * e * sum(a * b for a, b in zip(lq, lk))


#: op name (without ``aten.``) -> FLOPs from the op's arguments (``out_val`` = its output).
#: Ops :class:`FlopCounterMode` already counts keep its formula; one exception below.
FORMULAS: dict[str, FlopFormula] = {
    # attention kernels FlopCounterMode leaves at 0 on CPU
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa,
    "_scaled_dot_product_attention_math": _sdpa,
    "_scaled_dot_product_fused_attention_overrideable": _sdpa,
    "_transformer_encoder_layer_fwd": _encoder_layer_fwd,
    "_native_multi_head_attention": _native_mha,
    # matrix-vector and batched-reduce products
    "mv": _mv,
    "addmv": _addmv,
    "dot": _dot,
    "vdot": _dot,
    "addr": _addr,
    "addbmm": _addbmm,
    "addmm_": _addmm_like,
    "baddbmm_": _addmm_like,
    "addbmm_": _addbmm,
    "addmv_": _addmv,
    "addr_": _addr,
    "_addmm_activation": _addmm_like,
    "_int_mm": _mm_like,
    "mkldnn_linear": _linear_weight,
    "_trilinear": _trilinear,
    "_cdist_forward": _cdist,
    "_embedding_bag": _embedding_bag,
    "_embedding_bag_forward_only": _embedding_bag,
    # recurrent kernels (the gate nonlinearities are elementwise, not counted)
    "mkldnn_rnn_layer": _mkldnn_rnn_layer,
    "_cudnn_rnn": _cudnn_rnn,
    "miopen_rnn": _cudnn_rnn,
    # backend convolution kernels reached without aten.convolution
    "_slow_conv2d_forward": _conv(False),  # FlopCounterMode's formula misreads its arguments
    "slow_conv3d_forward": _conv(False),
    "slow_conv_dilated2d": _conv(False),
    "slow_conv_dilated3d": _conv(False),
    "thnn_conv2d": _conv(False),
    "_conv_depthwise2d": _conv(False),
    "conv_depthwise3d": _conv(False),
    "mkldnn_convolution": _conv(False),
    "miopen_convolution": _conv(False),
    "miopen_depthwise_convolution": _conv(False),
    "_nnpack_spatial_convolution": _conv(False),
    "_mps_convolution": _conv(False),
    "slow_conv_transpose2d": _conv(True),
    "slow_conv_transpose3d": _conv(True),
    "cudnn_convolution_transpose": _conv(True),
    "miopen_convolution_transpose": _conv(True),
    "_mps_convolution_transpose": _conv(True),
}

_OVERRIDE = frozenset({"_slow_conv2d_forward"})


def _raw(fn: FlopFormula) -> FlopFormula:
    def formula(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
        return int(fn(*args, out_val=out_val, **kwargs))

    formula._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode: pass tensors
    formula.__name__ = getattr(fn, "__name__", "formula")
    return formula


def extra_flop_mapping() -> dict[Any, FlopFormula]:
    """:data:`FORMULAS` as a ``custom_mapping`` for :class:`FlopCounterMode`: the ops this
    PyTorch build has, except those FlopCounterMode already counts correctly."""
    mapping: dict[Any, FlopFormula] = {}
    for name, fn in FORMULAS.items():
        packet = getattr(aten, name, None)
        if packet is None or (packet in flop_registry and name not in _OVERRIDE):
            continue
        mapping[packet] = _raw(fn)
    return mapping


#: Ops that move, create or reinterpret data without arithmetic worth counting.
NO_ARITHMETIC = frozenset(
    """
    _to_copy _unsafe_view alias arange as_strided cat clone constant_pad_nd contiguous
    copy copy_ detach embedding empty empty_like empty_strided expand fill fill_ full
    full_like gather index index_put index_put_ index_select lift_fresh lift_fresh_copy
    masked_fill masked_fill_ new_empty new_full new_ones new_zeros ones ones_like
    permute repeat reshape scalar_tensor select slice split split_with_sizes squeeze
    stack t transpose unbind unsqueeze view zero_ zeros zeros_like _local_scalar_dense
    item flatten unflatten narrow chunk roll flip pad where eq ne lt le gt ge argmax
    argmin topk sort argsort nonzero bernoulli_ rand randn randint randperm
    native_dropout dropout expand_as view_as to _reshape_alias set_ resize_ sym_size
    sym_stride is_nonzero equal any all logical_not logical_and logical_or
    unsafe_split unsafe_split_with_sizes unsafe_chunk im2col tril triu tril_ triu_
    masked_scatter scatter scatter_ index_copy index_copy_ index_fill index_fill_
    _nested_tensor_from_mask _nested_tensor_from_mask_left_aligned to_padded_tensor
    _nested_tensor_size _nested_tensor_strides _nested_tensor_storage_offsets
    _nested_from_padded _pad_packed_sequence _pack_padded_sequence _assert_async
    _assert_tensor_metadata _has_compatible_shallow_copy_type bitwise_not isnan isinf
    isfinite sign signbit _make_per_tensor_quantized_tensor int_repr q_scale q_zero_point
    q_per_channel_scales q_per_channel_zero_points mkldnn_reorder_conv2d_weight
    to_mkldnn to_dense _nested_view_from_buffer one_hot bucketize searchsorted
    _unique2 unique_dim unique_consecutive multinomial normal normal_ uniform_ random_
    exponential_ native_channel_shuffle channel_shuffle pixel_shuffle pixel_unshuffle
    col_indices crow_indices values indices _values _indices
    """.split()  # noqa: SIM905 - one word per op name, easier to scan
)

#: Arithmetic that is not a multiply-add and is left uncounted on purpose (on top of every
#: op tagged ``pointwise`` or ``reduction``).
CHEAP = frozenset(
    """
    add add_ sub sub_ rsub mul mul_ div div_ neg pow exp log sqrt rsqrt abs clamp clamp_
    addcmul addcdiv lerp maximum minimum fmod remainder floor_divide true_divide
    _softmax _log_softmax _safe_softmax softmax log_softmax _masked_softmax
    native_layer_norm native_group_norm native_batch_norm _native_batch_norm_legit
    _native_batch_norm_legit_no_training _native_batch_norm_legit_functional
    _batch_norm_with_update _batch_norm_no_update batch_norm_elemt batch_norm_stats
    batch_norm_gather_stats_with_counts _fused_rms_norm rms_norm _weight_norm_interface
    instance_norm layer_norm group_norm batch_norm
    max_pool1d max_pool2d max_pool3d max_pool2d_with_indices max_pool3d_with_indices
    avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d _adaptive_avg_pool2d
    _adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d
    mkldnn_max_pool2d mkldnn_adaptive_avg_pool2d fractional_max_pool2d lp_pool2d
    max_unpool2d max_unpool3d
    upsample_nearest1d upsample_nearest2d upsample_nearest3d upsample_linear1d
    upsample_bilinear2d upsample_trilinear3d upsample_bicubic2d _upsample_nearest_exact1d
    _upsample_nearest_exact2d _upsample_nearest_exact3d _upsample_bilinear2d_aa
    _upsample_bicubic2d_aa grid_sampler_2d grid_sampler_3d affine_grid_generator col2im
    reflection_pad1d reflection_pad2d reflection_pad3d replication_pad1d replication_pad2d
    replication_pad3d
    cumsum cumprod cummax cummin logcumsumexp _prelu_kernel prelu rrelu_with_noise
    quantize_per_tensor quantize_per_channel quantize_per_tensor_dynamic dequantize
    fake_quantize_per_tensor_affine fake_quantize_per_channel_affine
    fake_quantize_per_tensor_affine_cachemask fake_quantize_per_channel_affine_cachemask
    _fake_quantize_per_tensor_affine_cachemask_tensor_qparams
    _fake_quantize_learnable_per_tensor_affine _fake_quantize_learnable_per_channel_affine
    _choose_qparams_per_tensor choose_qparams_optimized
    embedding_renorm_ _euclidean_dist norm linalg_vector_norm frobenius_norm renorm
    scatter_add scatter_add_ scatter_reduce scatter_reduce_ index_add index_add_
    index_reduce segment_reduce _segment_reduce histc bincount
    binary_cross_entropy binary_cross_entropy_with_logits nll_loss nll_loss_forward
    nll_loss2d_forward mse_loss l1_loss smooth_l1_loss huber_loss kl_div
    cosine_similarity _pdist_forward polar complex view_as_real view_as_complex
    add_relu add_out add_scalar add_scalar_relu mul_relu mul_scalar mul_scalar_relu relu6
    hardswish hardsigmoid hardtanh leaky_relu sigmoid threshold elu celu cat_relu
    batch_norm1d batch_norm2d batch_norm3d batch_norm2d_relu batch_norm3d_relu
    embedding_byte embedding_4bit embedding_bag_byte_rowwise_offsets
    embedding_bag_4bit_rowwise_offsets
    """.split()  # noqa: SIM905 - one word per op name, easier to scan
)

#: Namespaces of bookkeeping ops (profiler ranges, e.g. around ``nn.DataParallel``).
_FREE_NAMESPACES = frozenset({"profiler", "prim"})

_CHEAP_TAGS = (torch.Tag.pointwise, torch.Tag.reduction)


def op_name(func: Any) -> str:
    """``aten.mm.default`` -> ``"mm"``; other namespaces keep theirs (``quantized.linear``)."""
    return str(func.overloadpacket).removeprefix("aten.")


def is_free(func: Any) -> bool:
    """True for an op that only moves, creates or reinterprets data."""
    if getattr(func, "is_view", False):
        return True
    name = op_name(func)
    if name.split(".", 1)[0] in _FREE_NAMESPACES:
        return True
    return name in NO_ARITHMETIC or name.rstrip("_") in NO_ARITHMETIC


def is_cheap(func: Any) -> bool:
    """True for arithmetic that is not a multiply-add (elementwise, reductions, norms,
    softmax, pooling, interpolation): left uncounted on purpose."""
    name = op_name(func)
    for prefix in ("quantized.", "quantized_"):  # int8 variants of cheap ops
        name = name.removeprefix(prefix)
    if name in CHEAP or name.rstrip("_") in CHEAP or name in NO_ARITHMETIC:
        return True
    return any(tag in _CHEAP_TAGS for tag in getattr(func, "tags", ()))
