"""int8 quantisation: dynamic, static (calibrated, optionally fine-tuned with fake
quantisation) and weight-only, on PyTorch's CPU int8 kernels.

The ``int8`` transformation (registered by :mod:`.convert`, named in
``frugalnn.plugins``) rebuilds a quantised model's structure, so its checkpoint
loads by name; :mod:`.codec` stores its int8 weights as plain safetensors.
"""
