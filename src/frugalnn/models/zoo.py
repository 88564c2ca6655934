"""Imports every model module so that its ``@register_model`` decorators run."""

from frugalnn.models import bert, cnn, lm, resnet, vit  # noqa: F401
from frugalnn.nas import net as _nas_net  # noqa: F401,E402  (registers "nas_net")
