"""Find what each method needs inside any ``nn.Module``: FFN sites and staged views.

* :func:`~frugalnn.models.adapters.ffn.find_ffn_sites`: feed-forward layers (plain
  ``fc2(act(fc1(x)))`` and gated/SwiGLU ``down(act(gate(x)) * up(x))``) of frugalnn
  models, Hugging Face BERT/ViT/Llama, timm-style ViTs and user-named modules;
* :func:`~frugalnn.models.adapters.staged.as_staged`: an ``embed / blocks / classify``
  view of a model (the structure early exits need), built automatically for recognisable
  architectures or from user-named exit points.
"""

from frugalnn.utils.lazy import lazy_attributes

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "find_ffn_sites": "frugalnn.models.adapters.ffn",
        "as_staged": "frugalnn.models.adapters.staged",
    },
)
