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
    import importlib
    import types

    from .api import (
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
        train_config,
        twist,
    )

    class _CallableModule(types.ModuleType):
        """A module that is also the API function of its name: `rubik.train(...)` trains and `rubik.train.trainer`
        is the engine, `rubik.search(...)` runs a study and `import rubik.search.study` still works."""

        def __call__(self, *args, **kwargs):
            from . import api

            return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)

    for _name in ("profile", "search", "train"):  # rubik/profile.py, rubik/search/, rubik/train/
        importlib.import_module(f".{_name}", __name__).__class__ = _CallableModule
    from .models import ModelSpec  # noqa: E402
    from .profile import Profile  # noqa: E402
