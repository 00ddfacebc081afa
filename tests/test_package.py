"""The package itself: the deploy runtime imports without PyTorch; the rest says it needs it."""

import subprocess
import sys
import textwrap


def test_deploy_runtime_imports_through_the_package_without_torch():
    script = textwrap.dedent("""
        import importlib.abc, sys

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, NoTorch())
        from rubik.deploy.runtime import Classifier
        import rubik
        assert "torch" not in sys.modules
        try:
            rubik.create_model
        except ImportError as e:
            assert "needs PyTorch" in str(e)
        else:
            raise AssertionError("create_model should need torch")
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_public_names():
    import torch

    import rubik
    from rubik.models import FAMILIES

    assert sorted(rubik.__all__) == sorted(n for n in rubik.__all__ if hasattr(rubik, n))
    assert "tinynet_a" in rubik.list_models()
    # The public path end to end: the hook count `profile` reports is the family's arithmetic on the plan.
    model = rubik.create_model("tinynet_e")
    p = rubik.profile(model, measure_latency=False)
    assert isinstance(p, rubik.Profile) and p.resolution == model.spec.resolution == 106
    assert p.macs == FAMILIES["mbconv"].macs(model.plan, 106, 1000)
    assert p.params == sum(t.numel() for t in model.parameters()) and p.latency_ms is None
    assert model(torch.zeros(1, 3, 106, 106)).shape == (1, 1000)
