"""Make ``--bf16`` / ``--memory-efficient-bf16`` work from fairseq's command-line tools.

fairseq 0.12's ``options.parse_args_and_arch`` (0.12.2 and fairseq-fixed alike) sets ``--tpu``
whenever ``--bf16`` is given, a leftover of bf16 having been TPU-only. Without ``torch_xla`` that
makes ``fairseq-train ... --bf16`` fail deep in the trainer (``'NoneType' object has no attribute
'xla_device'``), and with several processes it even skips the distributed set-up. The same settings
work from ``fairseq-hydra-train common.bf16=true``, which does not touch ``tpu``.

The plugin is imported while fairseq parses the command line, before any tool calls
``fairseq.distributed.utils.call_main`` (every fairseq CLI starts through it). Where ``torch_xla``
is not installed (so ``--tpu`` cannot work anyway) :func:`install` wraps that function to undo the
derived ``tpu`` flag: bf16 then runs on the CPU or GPU, as with hydra. No fairseq file is changed;
where ``torch_xla`` is installed nothing is wrapped and fairseq behaves as it always has.
"""
import functools
import importlib.util
import logging

logger = logging.getLogger(__name__)


def install() -> None:
    """Wrap fairseq's ``call_main`` once (only without ``torch_xla``)."""
    if importlib.util.find_spec("torch_xla") is not None:
        return
    from fairseq.distributed import utils as distributed_utils

    original = distributed_utils.call_main
    if getattr(original, "undoes_bf16_tpu", False):
        return

    @functools.wraps(original)
    def call_main(cfg, main, **kwargs):
        common = cfg.common
        if common.tpu and (common.bf16 or common.memory_efficient_bf16):
            logger.info("bf16 on %s: ignoring the --tpu that fairseq's command line derives from "
                        "--bf16 (torch_xla is not installed)",
                        "CPU" if common.cpu else "the available device")
            _clear_tpu(cfg)
        return original(cfg, main, **kwargs)

    call_main.undoes_bf16_tpu = True
    distributed_utils.call_main = call_main


def _clear_tpu(cfg) -> None:
    """``tpu = False`` in every config group that has the flag (the command line copies it into
    ``common``, ``distributed_training`` and the optimizer's group)."""
    for name in list(cfg.keys()):
        group = cfg.get(name)
        if hasattr(group, "keys") and "tpu" in group.keys():
            group.tpu = False
