"""Training: the loop, distillation, checkpoints and torchrun/DDP support.

``fit`` trains any model on a DataLoader (classification or language
modelling), resumably and deterministically; ``save_checkpoint`` /
``load_model`` store and rebuild models as safetensors + JSON.
"""

from frugalnn.train.checkpoint import load_model, load_weights, save_checkpoint, unwrap
from frugalnn.train.distill import DistillConfig
from frugalnn.train.loop import TrainResult, fit

__all__ = [
    "DistillConfig",
    "TrainResult",
    "fit",
    "load_model",
    "load_weights",
    "save_checkpoint",
    "unwrap",
]
