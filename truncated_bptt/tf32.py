"""TensorFloat-32 switch for fp32 matmuls and cuDNN convolutions on Ampere and newer NVIDIA GPUs.

TF32 keeps fp32's range with a 10-bit mantissa inside the tensor cores, which speeds up fp32
matmuls several times on compute capability >= 8.0 (A100, H100, ...). NVIDIA trains Transformer-XL
with it on; PyTorch leaves it off for matmuls by default. The task turns it on unless the user
passes ``--disable-tf32``. On CPUs and pre-Ampere GPUs the switch has no effect.

We set it through ``torch.set_float32_matmul_precision`` and ``torch.backends.cudnn.allow_tf32``:
with these, both PyTorch's legacy flags (``torch.backends.cuda.matmul.allow_tf32``) and its newer
``fp32_precision`` attributes read back consistently. (Assigning the newer ``fp32_precision``
attributes directly makes later reads of the legacy flags raise in torch >= 2.9.)
"""
import logging

import torch

logger = logging.getLogger(__name__)


def configure_tf32(enabled: bool) -> None:
    """Allow (``enabled=True``) or forbid TF32 in fp32 matmuls and cuDNN convolutions/RNNs.

    The setting is process-wide. Logs at INFO which CUDA devices it actually affects.
    """
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = bool(enabled)
    if not torch.cuda.is_available():
        logger.info("TF32 %s (no CUDA device: no effect)", "enabled" if enabled else "disabled")
        return
    ampere = [
        i for i in range(torch.cuda.device_count()) if torch.cuda.get_device_capability(i)[0] >= 8
    ]
    logger.info(
        "TF32 matmuls/cuDNN %s; CUDA devices of compute capability >= 8.0 (affected): %s",
        "enabled" if enabled else "disabled",
        ampere or "none",
    )
