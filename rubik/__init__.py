"""rubik: tiny, fast image models (EfficientNet, TinyNet, GhostNet) scaled to a budget.

On a device with only numpy and onnxruntime, `rubik.deploy.runtime` works without PyTorch: the
model-building names below then explain that they need it.
"""

__version__ = "0.1.0"
__all__ = ["ModelSpec", "Profile", "create_model", "list_models", "profile"]

try:
    import torch  # noqa: F401
except ImportError:  # a deploy-only install

    def __getattr__(name: str):
        if name in __all__:
            raise ImportError(f"rubik.{name} needs PyTorch; this environment has only the deploy runtime "
                              "(rubik.deploy.runtime)")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
else:
    from .models import ModelSpec, list_models
    from .models.weights import create_model
    from .profile import Profile, profile
