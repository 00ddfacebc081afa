"""rubik: tiny, fast image models (EfficientNet, TinyNet, GhostNet) scaled to a budget."""

from .models import ModelSpec, list_models
from .models.weights import create_model
from .profile import Profile, profile

__version__ = "0.1.0"
__all__ = ["ModelSpec", "Profile", "create_model", "list_models", "profile"]
