"""fairseq checkpoints load under torch.load's weights_only default without disabling it."""
import argparse
import collections
import pickle

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import truncated_bptt  # noqa: F401  (registers the allow-list)


class NotAllowed:
    def __init__(self):
        self.x = 1


def _fake_checkpoint(cfg):
    """A checkpoint as fairseq writes it: argparse-era ones have "args", newer ones "cfg"."""
    return {
        "args": None if cfg is not None else argparse.Namespace(
            task="language_modeling", arch="transformer_lm", criterion="cross_entropy",
            optimizer="adam", lr_scheduler="fixed", lr=[0.01], data="x", mem_len=150,
        ),
        "cfg": cfg,
        "model": collections.OrderedDict(w=torch.randn(3, 2)),
        "optimizer_history": [
            {"criterion_name": "AdaptiveCrossEntropy", "optimizer_name": "NvidiaLamb",
             "lr_scheduler_state": {"best": np.float64(4.0)}, "num_updates": 7}
        ],
        "extra_state": {
            "val_loss": np.float64(4.25),
            "best": np.float32(4.0),
            "train_iterator": {"epoch": 2, "iterations_in_epoch": 5, "shuffle": False},
            "metrics": collections.OrderedDict(),
            "steps": np.int64(3),
            "array": np.arange(3),
        },
        "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": []},
    }


@pytest.mark.parametrize("cfg_kind", ["none", "plain", "omegaconf"])
def test_fairseq_checkpoint_loads_with_weights_only(tmp_path, cfg_kind):
    plain = {"common": {"seed": 1}, "model": {"_name": "transformer_xl", "cutoffs": [2, 3]}}
    cfg = {"none": None, "plain": plain, "omegaconf": OmegaConf.create(plain)}[cfg_kind]
    path = tmp_path / "checkpoint.pt"
    saved = _fake_checkpoint(cfg)
    torch.save(saved, path)

    state = torch.load(path)  # torch >= 2.6: weights_only=True by default
    if cfg is None:
        assert state["args"].mem_len == 150
    assert float(state["extra_state"]["val_loss"]) == 4.25
    assert state["extra_state"]["array"].tolist() == [0, 1, 2]

    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert torch.equal(state["model"]["w"], saved["model"]["w"])
    if cfg is None:  # an argparse-era checkpoint is upgraded to an omegaconf config by fairseq
        assert state["cfg"].task._name == "language_modeling"
    else:
        assert state["cfg"].model.cutoffs == [2, 3]


def test_other_globals_are_still_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": NotAllowed()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)


def test_distributed_checkpoint_broadcast_placeholders_load(tmp_path):
    """Rank 0 broadcasts a checkpoint to the other ranks as a pickle whose tensors are replaced by
    fairseq's _TensorPlaceholder; the receiving ranks unpickle it with torch.load."""
    from fairseq.distributed.utils import _put_tensors_in_obj, _split_tensors_from_obj

    tensors = []
    obj = _split_tensors_from_obj({"model": {"w": torch.ones(2)}, "step": 3}, tensors)
    path = tmp_path / "broadcast.pt"
    torch.save(obj, path)
    restored = _put_tensors_in_obj(torch.load(path, map_location="cpu"), tensors)
    assert torch.equal(restored["model"]["w"], torch.ones(2)) and restored["step"] == 3
