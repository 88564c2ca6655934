"""Imports every model module so that its ``@register_model`` decorators run.

frugalnn's own models live in this package; method plugins that add models
(``frugalnn.plugins``) are imported by name, so this package imports no method.
"""

import importlib

from frugalnn.models import bert, cnn, lm, resnet, vit  # noqa: F401
from frugalnn.plugins import plugin_modules

for _name in plugin_modules("models"):
    importlib.import_module(_name)
