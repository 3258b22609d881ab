"""Generation with truncated_bptt_lm: one step per token over cached memory, scores equal to a plain
full forward, --carry-memory across inputs, and the real fairseq-interactive / fairseq-generate."""

import pytest
import torch
from fairseq.dataclass.configs import GenerationConfig

from fairseq_commands import USER_DIR, run
from inference_models import binarize, tiny_checkpoint, tiny_model


def prompt_sample(task, lines):
    """A fairseq-interactive batch of ``lines`` built by the task itself."""
    d = task.dictionary
    tokens = [d.encode_line(line, add_if_not_exist=False).long() for line in lines]
    dataset = task.build_dataset_for_inference(tokens, [t.numel() for t in tokens])
    return dataset.collater([dataset[i] for i in range(len(dataset))])


def greedy(task, model, max_len_b=9):
    return task.build_generator([model], GenerationConfig(beam=1, max_len_b=max_len_b, min_len=3))


def full_forward_log_probs(model, stream):
    """Naive reference: log p(stream[t + 1] | stream[:t + 1]) from ONE stateless forward, [L - 1]."""
    with torch.no_grad():
        features, _ = model(stream[:-1].unsqueeze(0), memory_key=None)
        return model.decoder.target_log_probs(features, stream[1:].unsqueeze(0))[0]


def record_layer_inputs(model):
    """Record (query length, memory length) of every call of the first layer."""
    calls = []

    def hook(module, args):
        h, memory, keys_values = args[0], args[2], args[3]  # layer(h, context, memory, keys_values, ...)
        if keys_values is not None:  # an inference pass: memory's keys/values, then room for h's
            calls.append((h.size(1), keys_values.size(1) - h.size(1)))
        else:
            calls.append((h.size(1), 0 if memory is None else memory.size(1)))

    return calls, model.decoder.layers[0].register_forward_pre_hook(hook)


PROMPT = "w1 w2 w3 w25 w4 w5 w6 w7 w8 w9 w30"  # 11 tokens


def test_prompt_read_in_parallel_then_one_step_per_token_and_scores_equal_full_forward(
        dictionary_dir):
    model, task, _ = tiny_model(dictionary_dir, "--mem-len", "64")  # tokens_per_sample 8
    generator = greedy(task, model, max_len_b=16)
    calls, handle = record_layer_inputs(model)
    hypo = task.inference_step(generator, [model], prompt_sample(task, [PROMPT]))[0][0]
    handle.remove()
    tokens = hypo["tokens"]
    assert tokens[:11].tolist() == [task.dictionary.index(w) for w in PROMPT.split()]
    assert len(tokens) == 17  # prompt (11) + 5 generated + final eos (max_len_b 16)
    # eos + 10 prompt tokens in two parallel chunks (8 + 3), then one single-query call per token
    # over all earlier positions as memory.
    assert calls == [(8, 0), (3, 8)] + [(1, m) for m in range(11, len(tokens))]
    stream = torch.cat([tokens.new_tensor([task.dictionary.eos()]), tokens])
    reference = full_forward_log_probs(model, stream)
    assert torch.allclose(hypo["positional_scores"], reference, atol=1e-5)


def test_beam_search_over_a_primed_prompt(dictionary_dir):
    model, task, _ = tiny_model(dictionary_dir, "--mem-len", "64")
    generator = task.build_generator([model], GenerationConfig(beam=3, nbest=3, max_len_b=14, min_len=3))
    hypos = task.inference_step(generator, [model], prompt_sample(task, [PROMPT]))[0]
    assert len(hypos) == 3
    for hypo in hypos:
        stream = torch.cat([hypo["tokens"].new_tensor([task.dictionary.eos()]), hypo["tokens"]])
        assert torch.allclose(hypo["positional_scores"], full_forward_log_probs(model, stream), atol=1e-5)


def test_sampling_top_k_and_temperature_reach_the_generator(dictionary_dir):
    model, task, _ = tiny_model(dictionary_dir, "--mem-len", "64")
    with torch.no_grad():  # a peaked model, so that unrestricted sampling leaves the greedy path
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    sample = prompt_sample(task, ["w1 w2"])
    best = task.inference_step(greedy(task, model, 30), [model], sample)[0][0]["tokens"]

    def sampled(**options):
        torch.manual_seed(0)
        cfg = GenerationConfig(beam=1, max_len_b=30, min_len=3, sampling=True, **options)
        return task.inference_step(task.build_generator([model], cfg), [model], sample)[0][0]["tokens"]

    assert torch.equal(sampled(sampling_topk=1), best)
    assert not torch.equal(sampled(temperature=5.0), best)


def test_memory_is_capped_at_mem_len_and_ragged_prompts_are_forced_step_by_step(dictionary_dir):
    model, task, _ = tiny_model(dictionary_dir, "--mem-len", "3")
    calls, handle = record_layer_inputs(model)
    hypos = task.inference_step(greedy(task, model), [model], prompt_sample(task, ["w1 w2 w3", "w4"]))
    handle.remove()
    # the common prompt length is 1 (nothing to read in parallel): every step is one query
    assert calls == [(1, min(i, 3)) for i in range(10)]
    assert hypos[0][0]["tokens"][:3].tolist() == [task.dictionary.index(w) for w in ("w1", "w2", "w3")]
    assert hypos[1][0]["tokens"][0] == task.dictionary.index("w4")


def test_carry_memory_generates_over_previous_inputs_and_outputs(dictionary_dir):
    model, task, _ = tiny_model(dictionary_dir, "--mem-len", "64")
    task.cfg.carry_memory = True
    generator = greedy(task, model, max_len_b=7)
    first = task.inference_step(generator, [model], prompt_sample(task, ["w4 w5"]))[0][0]
    second = task.inference_step(generator, [model], prompt_sample(task, ["w6 w33 w7"]))[0][0]
    eos = task.dictionary.eos()

    def line(hypo):  # the stream's copy of an input: eos, then the hypothesis without its eos
        t = hypo["tokens"]
        return torch.cat([t.new_tensor([eos]), t[:-1] if t[-1] == eos else t])

    stream = torch.cat([line(first), line(second), second["tokens"][-1:]])
    reference = full_forward_log_probs(model, stream)
    n = len(second["tokens"])
    assert torch.allclose(second["positional_scores"], reference[-n:], atol=1e-5)

    task.cfg.carry_memory = False  # without carrying, the second input starts from empty memory
    alone = task.inference_step(greedy(task, model, 7), [model], prompt_sample(task, ["w6 w33 w7"]))
    assert not torch.allclose(alone[0][0]["positional_scores"][:3], second["positional_scores"][:3])


def test_carry_memory_rejects_batches_of_several_inputs(dictionary_dir):
    model, task, _ = tiny_model(dictionary_dir, "--mem-len", "8")
    task.cfg.carry_memory = True
    with pytest.raises(ValueError, match="--batch-size 1"):
        task.inference_step(greedy(task, model), [model], prompt_sample(task, ["w1", "w2 w3"]))


def test_cli_interactive_sampling_with_prompt_and_carried_memory_and_generate_prefix(
        dictionary_dir, tmp_path):
    # A split of text to generate from with fairseq-generate, made with the model's dictionary.
    data = str(tmp_path / "data")
    binarize(dictionary_dir, data, "test", ["w1 w2 w3 w4 w5 w6 w7 w8 w9", "w10 w11 w12 w13"])
    ckpt = str(tmp_path / "model.pt")
    tiny_checkpoint(data, ckpt, "--mem-len", "16")
    common = [data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm", "--path", ckpt,
              "--cpu", "--seed", "3", "--beam", "1", "--sampling", "--temperature", "0.7",
              "--max-len-b", "12"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w1 w2 w3\nw30 w31\n")
    out = run("fairseq-interactive", *common, "--sampling-topk", "5", "--carry-memory",
              "--input", str(prompts))
    hyps = [line.split("\t")[2].split() for line in out.splitlines() if line.startswith("H-")]
    assert len(hyps) == 2 and hyps[0][:3] == ["w1", "w2", "w3"] and hyps[1][:2] == ["w30", "w31"]

    # fairseq-generate on a preprocessed split: each stream segment continues its first 4 tokens.
    out = run("fairseq-generate", *common, "--gen-subset", "test", "--batch-size", "1",
              "--prefix-size", "4", "--sampling-topp", "0.9")
    targets = {l.split("\t")[0][2:]: l.split("\t")[1].split() for l in out.splitlines() if l.startswith("T-")}
    hyps = {l.split("\t")[0][2:]: l.split("\t")[2].split() for l in out.splitlines() if l.startswith("H-")}
    assert hyps and set(hyps) == set(targets)
    assert all(hyps[i][:4] == targets[i][:4] for i in hyps)
