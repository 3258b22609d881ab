"""--model-overrides that fairseq would ignore, or that have the wrong type, are refused in one line."""
import pytest

from truncated_bptt import model_overrides
from truncated_bptt.transformer_xl_model import TransformerXLConfig
from truncated_bptt.truncated_bptt_lm_task import TruncatedBPTTLMConfig


def check(text):
    model_overrides.check(text, TransformerXLConfig, TruncatedBPTTLMConfig)


@pytest.mark.parametrize("text", [
    "{}",
    "{'mem_len': 640, 'clamp_len': 400, 'same_length': True}",
    '{"mem_len":64,"clamp_len":4,"same_length":True}',
    "{'dropout': 0, 'cutoffs': [20000, 40000]}",  # an int is a fine float
    "{'lr': [0.1]}",  # another group's option: fairseq sets it (to no effect at evaluation)
    "{'mem_len': 64 * 10}",  # not a literal: fairseq evaluates it, left unchecked
])
def test_good_overrides_pass(text):
    check(text)


@pytest.mark.parametrize("text, message", [
    ("{'mem_len': 64", r"^--model-overrides \"\{'mem_len': 64\" is not a Python dict \(.*\): write "
                       r"it as --model-overrides"),
    ("['mem_len', 64]", r"is not a dict of option names to values"),
    ("{'memlen': 64}", r"sets 'memlen', which is no option of the model or of fairseq, so fairseq "
                       r"would ignore it: did you mean 'mem_len'\? the model's options are "
                       r"attention, checkpoint_activations, .*, mem_len, "),
    ("{'mem_len': '640'}", r"gives 'mem_len' the str '640', but mem_len takes an int, e.g. "
                           r"--model-overrides \"\{'mem_len': 0\}\""),
    ("{'same_length': 1}", r"gives 'same_length' the int 1, but same_length takes True or False"),
    ("{'cutoffs': 20000}", r"cutoffs takes a list of ints"),
    ("{'tokens_per_sample': 64}", r"sets 'tokens_per_sample', an option of the task, which fairseq "
                                  r"builds from the command line, not from the checkpoint: give "
                                  r"--tokens-per-sample instead"),
    ("{'data': 'data-bin/x'}", r"sets 'data', an option of the task, .*: give the DATA argument"),
])
def test_bad_overrides_are_refused_in_one_line(text, message):
    with pytest.raises(ValueError, match=message) as err:
        check(text)
    assert "\n" not in str(err.value)
