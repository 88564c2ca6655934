"""Dense-to-mixture-of-experts conversion (MoEfication, D2DMoE) that saves compute for real.

Steps: optional sparsity enforcement (:mod:`.sparsify`), expert split
(:mod:`.split`), routers (:mod:`.router`), the MoE layer with grouped
execution (:mod:`.layer`), the conversion with its budget knob
(:mod:`.convert`), and routed fine-tuning below full budget
(:mod:`.finetune`). Importing this package registers the ``moe`` and
``ffn_relu`` transformations used when checkpoints are loaded.
"""

from frugalnn.methods.moe.convert import (
    DEFAULT_TAUS,
    MoEModel,
    convert_to_moe,
    rebuild_moe,
    train_routers,
)
from frugalnn.methods.moe.finetune import RoutedLoss, finetune_routed
from frugalnn.methods.moe.layer import MoEFFN
from frugalnn.methods.moe.router import Router, select_dynamic_k, select_top_k
from frugalnn.methods.moe.sparsify import SparsityLoss, enforce_sparsity, hoyer_squared, relu_ffn
from frugalnn.methods.moe.split import balanced_kmeans, expert_layout, split_neurons

__all__ = [
    "DEFAULT_TAUS",
    "MoEFFN",
    "MoEModel",
    "Router",
    "RoutedLoss",
    "SparsityLoss",
    "balanced_kmeans",
    "convert_to_moe",
    "enforce_sparsity",
    "expert_layout",
    "finetune_routed",
    "hoyer_squared",
    "rebuild_moe",
    "relu_ffn",
    "select_dynamic_k",
    "select_top_k",
    "split_neurons",
    "train_routers",
]
