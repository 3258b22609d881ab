"""When fairseq-train writes a checkpoint that must hold the training streams' memory.

fairseq-train decides after every update, in ``fairseq_cli.train.validate_and_save`` (the same in
fairseq 0.12.2 and fairseq-fixed 0.12.3.1), whether to validate and whether to save. It saves

- at the end of an epoch (every ``--save-interval`` epochs),
- every ``--save-interval-updates`` updates (from ``--validate-after-updates`` on),
- when it stops: at ``--max-update``, when ``--stop-time-hours`` is up, or when ``--patience``
  validations brought no improvement,

unless ``--no-save``. A checkpoint needs the streams' memory only when it is written mid-epoch: at
the end of an epoch the saved iterator state starts the next epoch, where every stream starts
empty. Of the mid-epoch saves, those of the first two kinds are known from the update count alone;
the other two follow from the clock or from a validation result, and when validation is enabled a
validation always comes first (fairseq validates before every mid-epoch save).

fp16 loss scaling (``--fp16``, ``--amp``) adds one case: an update whose gradients overflow is
skipped without counting, and fairseq-train then goes through ``validate_and_save`` again with the
same update count, so a save announced by that count is made again, after one more segment.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class SaveSchedule:
    """fairseq's options that decide when it saves (0 / -1: unset, as in fairseq)."""
    save_interval_updates: int = 0
    max_update: int = 0
    validate_after_updates: int = 0
    no_save: bool = False
    patience: int = -1
    stop_time_hours: float = 0.0

    def saves_mid_epoch_after_update(self, num_updates: int, end_of_epoch: bool) -> bool:
        """Whether fairseq-train writes a mid-epoch checkpoint once it has ``num_updates`` updates,
        whatever its validation finds (``end_of_epoch``: the update read the epoch's last step)."""
        if end_of_epoch or self.no_save:
            return False
        every = self.save_interval_updates
        on_interval = (every > 0 and num_updates > 0 and num_updates % every == 0
                       and num_updates >= self.validate_after_updates)
        return on_interval or (self.max_update > 0 and num_updates >= self.max_update)

    def may_save_mid_epoch_after_validation(self, end_of_epoch: bool) -> bool:
        """Whether a mid-epoch validation may be followed by a checkpoint the update count does not
        announce: ``--patience`` stops (and saves) on a validation result, ``--stop-time-hours`` on
        the clock."""
        if end_of_epoch or self.no_save:
            return False
        return self.patience > 0 or self.stop_time_hours > 0
