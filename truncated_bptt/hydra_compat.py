"""Let hydra-core 1.0 report a job's error on Python >= 3.10 instead of failing in its own report.

hydra 1.0.7 (the version fairseq 0.12.2 pins) prints an uncaught error of the job with
``traceback.print_exception(etype=None, value=..., tb=...)``. Python 3.10 renamed that first
parameter, so the printing itself raises ``TypeError: print_exception() got an unexpected keyword
argument 'etype'``, which then ends the output of every failing ``fairseq-hydra-train`` run instead
of the real error. hydra 1.1 fixed the call. For hydra < 1.1 on Python >= 3.10 the name hydra looks
up is pointed at a function that accepts the old keyword and prints the same trimmed traceback;
nothing else in hydra changes. The plugin installs it when imported, which happens (through
``common.user_dir``) before the job code that can fail runs.
"""
import sys
import traceback


def print_exception(etype=None, value=None, tb=None, limit=None, file=None, chain=True):
    """``traceback.print_exception`` with the pre-3.10 ``etype`` keyword (ignored, as 3.5+ did)."""
    traceback.print_exception(type(value), value, tb, limit=limit, file=file, chain=chain)


def needs_shim(hydra_version: str, python_version=sys.version_info) -> bool:
    """True for hydra < 1.1 on Python >= 3.10."""
    major, minor = (int(part) for part in hydra_version.split(".")[:2])
    return (major, minor) < (1, 1) and tuple(python_version[:2]) >= (3, 10)


def install() -> bool:
    """Point hydra's ``print_exception`` at :func:`print_exception` where needed; True if it did."""
    try:
        import hydra
        from hydra._internal import utils as hydra_utils
    except ImportError:
        return False
    if not needs_shim(hydra.__version__) or not hasattr(hydra_utils, "print_exception"):
        return False
    hydra_utils.print_exception = print_exception
    return True
