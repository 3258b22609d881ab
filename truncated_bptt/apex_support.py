"""Optional NVIDIA apex: detected once, used only where it is installed (it is not on PyPI)."""
import functools
import importlib.util


@functools.lru_cache(maxsize=None)
def apex_available() -> bool:
    """True when apex and its compiled fused optimizers can be imported."""
    if importlib.util.find_spec("apex") is None:
        return False
    try:
        import amp_C  # noqa: F401  (apex's compiled multi-tensor kernels)
        from apex.optimizers import FusedLAMB  # noqa: F401
    except Exception:  # a Python-only apex build, or one compiled for another torch/CUDA
        return False
    return True
