"""Dense-to-mixture-of-experts conversion (MoEfication, D2DMoE) that saves compute for real.

Steps: optional sparsity enforcement (:mod:`.sparsify`), expert split
(:mod:`.split`), routers (:mod:`.router`), the MoE layer with grouped
execution (:mod:`.layer`), the conversion with its budget knob
(:mod:`.convert`), and routed fine-tuning below full budget
(:mod:`.finetune`); :mod:`.recipe` puts them together (``MoEConfig``,
``moe``, ``run_moe``), for the CLI, the demo and the benchmarks. Importing
this package registers the ``moe`` and ``ffn_relu`` transformations used when
checkpoints are loaded.
"""

from frugalnn.utils.lazy import lazy_attributes

#: Public name -> submodule that defines it (imported on first use: no torch at import).
_EXPORTS = {
    "DEFAULT_TAUS": ".convert",
    "MoEConfig": ".recipe",
    "MoEFFN": ".layer",
    "MoEModel": ".convert",
    "MoERun": ".recipe",
    "RoutedLoss": ".finetune",
    "Router": ".router",
    "SparsityLoss": ".sparsify",
    "balanced_kmeans": ".split",
    "convert_to_moe": ".convert",
    "enforce_sparsity": ".sparsify",
    "expert_layout": ".split",
    "finetune_routed": ".finetune",
    "hoyer_squared": ".sparsify",
    "moe": ".recipe",
    "rebuild_moe": ".convert",
    "relu_ffn": ".sparsify",
    "run_moe": ".recipe",
    "select_dynamic_k": ".router",
    "select_top_k": ".router",
    "split_neurons": ".split",
    "train_routers": ".convert",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
