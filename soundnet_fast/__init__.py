"""soundnet_fast: SoundNet (Aytar, Vondrick, Torralba 2016), performance-engineered."""

from soundnet_fast.model import SoundNet5, SoundNet8
from soundnet_fast.weights import load_pretrained

__all__ = ["SoundNet5", "SoundNet8", "load_pretrained"]
__version__ = "0.1.0"
