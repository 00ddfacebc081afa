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
    import rubik

    assert callable(rubik.create_model) and callable(rubik.profile) and "tinynet_a" in rubik.list_models()
