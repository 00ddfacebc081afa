"""rubik: tiny, fast image models (EfficientNet, TinyNet, GhostNet) scaled to a budget, as classifiers and
detectors, trained on your data and exported for the edge. The Python API (`rubik.api`) is here:
`rubik.twist`, `rubik.train`, `rubik.load_run`, `rubik.create_model`, `rubik.profile`, `rubik.export`, ...

On a device with only numpy and onnxruntime, `rubik.deploy.runtime` works without PyTorch: the
names below then explain that they need it.
"""

__version__ = "0.1.0"
__all__ = ["ModelSpec", "Profile", "RubikError", "Run", "bench", "cam", "create_model", "evaluate", "export",
           "list_models", "load_model", "load_run", "model_table", "predict", "profile", "search", "train",
           "train_config", "twist"]

from .errors import RubikError  # noqa: E402

try:
    import torch  # noqa: F401
except ImportError:  # a deploy-only install

    def __getattr__(name: str):
        if name in __all__:
            raise ImportError(f"rubik.{name} needs PyTorch; this environment has only the deploy runtime "
                              "(rubik.deploy.runtime)")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
else:
    # The packages named like API functions (rubik/profile.py, rubik/train/, rubik/search/) load first: importing
    # a submodule later would rebind its name here, over the function. `import rubik.train.trainer` still works.
    from . import profile as _profile_module  # noqa: F401
    from . import search as _search_package  # noqa: F401
    from . import train as _train_package  # noqa: F401
    from .api import (  # noqa: E402
        Run,
        bench,
        cam,
        create_model,
        evaluate,
        export,
        list_models,
        load_model,
        load_run,
        model_table,
        predict,
        profile,
        search,
        train,
        train_config,
        twist,
    )
    from .models import ModelSpec  # noqa: E402
    from .profile import Profile  # noqa: E402
