"""Small feed-forward text models under a memory budget (Botha et al., 2017; CLD3).

Hashed character n-gram, word, affix and shape features (:mod:`.features`), averaged per
group in small embedding tables and fed to a one- or two-layer perceptron
(:mod:`.models`), sized to a byte budget (:mod:`.budget`), tables stored in 8 bits
(:mod:`frugalnn.models.embedding8`); :mod:`.recipe` trains and evaluates them
(``NgramConfig``, ``ngram``, ``run_ngram``) for the CLI and the benchmarks;
:mod:`.references` the large models they are measured against (a character CNN and a
BiLSTM tagger).
"""

from frugalnn.utils.lazy import lazy_attributes

_EXPORTS = {
    "NgramConfig": ".recipe",
    "NgramNet": ".models",
    "ReferenceConfig": ".references",
    "TextModel": ".recipe",
    "ngram": ".recipe",
    "plan_budget": ".budget",
    "run_ngram": ".recipe",
    "stable_hash": ".features",
    "train_reference": ".references",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
