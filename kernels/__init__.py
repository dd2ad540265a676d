"""Fused Triton kernels for audio CNNs (torch + triton only; never imports soundnet_fast).

Importing the package defines the kernels and registers the ``soundnet_fast::`` torch.library ops;
nothing is compiled or launched until first use. ``SUPPORT_MATRIX`` is the Markdown text of what the
fused conv op supports and refuses.
"""

from .conv_bn_relu import SUPPORT_MATRIX, conv1d_bn_relu
from .inputs import is_padded_input, padded_input_buffer
from .kl_div import kl_div
from .memory import saved_activation_bytes
from .modules import FusedConv1dBNReLU, conv_bn_relu_modules, fold, fuse, unfuse

__all__ = [
    "SUPPORT_MATRIX",
    "FusedConv1dBNReLU",
    "conv1d_bn_relu",
    "conv_bn_relu_modules",
    "fold",
    "fuse",
    "is_padded_input",
    "kl_div",
    "padded_input_buffer",
    "saved_activation_bytes",
    "unfuse",
]
