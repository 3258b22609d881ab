"""Let ``torch.load(weights_only=True)`` read fairseq checkpoints without disabling its protection.

Since torch 2.6, ``torch.load`` refuses to unpickle anything but tensors and plain containers unless
the types are allow-listed. fairseq checkpoints also hold their configuration (an
``argparse.Namespace`` in older ones, omegaconf containers or plain dicts in newer ones) and a few
numpy scalars in the training state. Those specific, data-only types are allow-listed here; every
other global in a checkpoint is still refused, as torch intends. Loading untrusted pickles with
``weights_only=False`` is never done behind the user's back.
"""
import argparse
import collections
import typing

import torch


def _numpy_types():
    import numpy as np

    types = [np.dtype, np.ndarray]
    try:  # numpy >= 2 moved the scalar reconstructor
        from numpy._core.multiarray import scalar, _reconstruct
    except ImportError:
        from numpy.core.multiarray import scalar, _reconstruct
    types += [scalar, _reconstruct]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles dtypes by their class
    if dtypes is not None:
        types += [
            getattr(dtypes, name)
            for name in dir(dtypes)
            if name.endswith("DType") and isinstance(getattr(dtypes, name), type)
        ]
    return types


def _omegaconf_types():
    try:
        import omegaconf
        from omegaconf import base, nodes
    except ImportError:
        return []
    types = [omegaconf.DictConfig, omegaconf.ListConfig, base.ContainerMetadata, base.Metadata]
    types += [
        getattr(nodes, name)
        for name in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode",
                     "EnumNode", "ValueNode", "BytesNode", "PathNode")
        if hasattr(nodes, name)
    ]
    return types


def _fairseq_types():
    try:  # rank 0 broadcasts checkpoints to the other ranks with these in place of tensors
        from fairseq.distributed.utils import _TensorPlaceholder
    except ImportError:
        return []
    return [_TensorPlaceholder]


def fairseq_checkpoint_safe_types() -> list:
    """The data-only types fairseq checkpoints (ours and older argparse-era ones) contain."""
    return [
        argparse.Namespace,
        collections.defaultdict,
        collections.OrderedDict,
        typing.Any,
        dict,
        list,
        set,
        tuple,
        int,
        float,
        bool,
        str,
        slice,
        *(_numpy_types()),
        *(_omegaconf_types()),
        *(_fairseq_types()),
    ]


def allow_fairseq_checkpoint_types() -> None:
    """Register :func:`fairseq_checkpoint_safe_types` with torch (a no-op before torch 2.4)."""
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is not None:
        add_safe_globals(fairseq_checkpoint_safe_types())
