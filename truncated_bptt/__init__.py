"""truncated-bptt: Transformer-XL with truncated backpropagation through time for fairseq.

Importing this package (directly, or through fairseq's ``--user-dir truncated_bptt``) registers:

- task ``truncated_bptt_lm`` (:mod:`truncated_bptt.truncated_bptt_lm_task`),
- model ``transformer_xl`` and its presets (:mod:`truncated_bptt.transformer_xl_model`),
- criterion ``adaptive_cross_entropy`` (:mod:`truncated_bptt.adaptive_cross_entropy_criterion`),
- optimizer ``nvidia_lamb`` (:mod:`truncated_bptt.lamb_optimizer`),
- lr scheduler ``cosine_warmup`` (:mod:`truncated_bptt.cosine_warmup_scheduler`),
- BPE ``byte_tokens``, one token per byte for character-level corpora (:mod:`truncated_bptt.byte_tokens`),

allow-lists the types fairseq checkpoints pickle for ``torch.load(weights_only=True)``
(:mod:`truncated_bptt.checkpoint_safety`), makes ``--bf16`` work from fairseq's command-line tools
without torch_xla (:mod:`truncated_bptt.bf16_command_line`), and with hydra < 1.1 on Python >= 3.10
lets hydra print a job's error (:mod:`truncated_bptt.hydra_compat`).
"""
__version__ = "0.1.0"

from truncated_bptt import bf16_command_line, hydra_compat
from truncated_bptt.apex_support import apex_available  # noqa: F401
from truncated_bptt.checkpoint_safety import allow_fairseq_checkpoint_types

allow_fairseq_checkpoint_types()
bf16_command_line.install()
hydra_compat.install()  # hydra 1.0 on Python >= 3.10: report job errors, not a TypeError

# Imported for their @register_* side effects.
from truncated_bptt import (  # noqa: E402,F401
    adaptive_cross_entropy_criterion,
    byte_tokens,
    cosine_warmup_scheduler,
    lamb_optimizer,
    transformer_xl_model,
    truncated_bptt_lm_task,
)


def _also_known_as_fairseq_user_dir():
    """List the spelling fairseq's ``--user-dir`` fallback uses for this directory in ``__path__``.

    When ``--user-dir truncated_bptt`` does not exist relative to the working directory, fairseq
    looks for it next to its own package and names it ``.../site-packages/fairseq/../truncated_bptt``
    without normalising; it then compares that string with ``__path__`` to decide whether the
    module already imported is the same one. Without the alias, ``import truncated_bptt`` followed
    by ``--user-dir truncated_bptt`` in one process fails as "not globally unique".
    """
    import os

    import fairseq

    here = os.path.dirname(os.path.abspath(__file__))
    alias = os.path.join(os.path.dirname(fairseq.__file__), "..", os.path.basename(here))
    if os.path.exists(alias) and os.path.samefile(alias, here) and alias not in __path__:
        __path__.append(alias)


_also_known_as_fairseq_user_dir()
