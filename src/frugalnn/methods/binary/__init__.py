"""Binary / XNOR layers: bit-packed weights, straight-through training, a packed-bit kernel."""
