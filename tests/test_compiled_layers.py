"""--compile: torch.compile'd layers give the eager model's outputs, gradients and fairseq-train
updates (fp32, 1e-5), in few graphs whatever the memory and segment lengths; eager with one warning
where compiling fails. Every test asserts which path ran."""
import logging

import pytest
import torch

from examples.fairseq_logs import parse_record
from fairseq_commands import USER_DIR, preprocess, run, write_lines
from inference_models import small_decoder, tokens
from truncated_bptt.compiled_layers import CompiledLayers

# One xdist worker runs this module: its tests compile the same graphs, which inductor's on-disk
# cache then serves to the later ones (scripts/test.sh runs pytest with --dist loadgroup).
pytestmark = pytest.mark.xdist_group("torch_compile")

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def assert_close_normwise(got, want, tolerance=1e-5):
    """|got - want| <= tolerance * max|want| everywhere: float reordering in fused kernels moves
    elements that are small next to the tensor's scale by more than 1e-5 of themselves."""
    assert (got - want).abs().max() <= tolerance * want.abs().max(), \
        ((got - want).abs().max().item(), want.abs().max().item())


def pair(**options):
    """(compiled, eager) decoders with identical weights."""
    compiled, eager = small_decoder(compile=True, **options), small_decoder(**options)
    eager.load_state_dict(compiled.state_dict())
    return compiled, eager


def unique_graphs():
    import torch._dynamo.utils

    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_compiled_layers_equal_eager_in_training_evaluation_and_generation():
    compiled, eager = pair(mem_len=8, clamp_len=6, same_length=True)
    x = tokens(2, 25)
    graphs_before = unique_graphs()
    for i, segment in enumerate(x[:, :20].split(5, dim=1)):  # memory 0, 5, 8, 8: training
        outs = [model(segment, memory_key="train", segment_index=i)[0] for model in (compiled, eager)]
        torch.testing.assert_close(outs[0], outs[1], **TOLERANCE)
        for out in outs:
            (out ** 2).sum().backward()
    for a, b in zip(compiled.parameters(), eager.parameters()):
        assert (a.grad is None) == (b.grad is None)
        if b.grad is not None:
            assert_close_normwise(a.grad, b.grad)
    compiled.eval(), eager.eval()
    with torch.no_grad():
        for i, segment in enumerate(x.split(4, dim=1)):  # an evaluation pass, memory growing in place
            outs = [model(segment, memory_key="valid", segment_index=i)[0] for model in (compiled, eager)]
            torch.testing.assert_close(outs[0], outs[1], **TOLERANCE)
        states = ({}, {})
        for t in range(1, 12):  # generation: one query per step over a growing memory
            outs = [model(x[:, :t], incremental_state=state)[0]
                    for model, state in zip((compiled, eager), states)]
            torch.testing.assert_close(outs[0], outs[1], **TOLERANCE)
    assert compiled.compiled_layers.failure is None and compiled.compiled_layers.compiled_calls > 0
    # training / inference x with / without memory x one / several queries, at most
    assert unique_graphs() - graphs_before <= 8


def test_a_failed_compile_warns_once_and_runs_eagerly(monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("no C++ compiler found\nmore details")

    monkeypatch.setattr(CompiledLayers, "_compiled", broken)
    compiled, eager = pair()
    x = tokens(2, 6)
    with caplog.at_level(logging.WARNING):
        out, _ = compiled(x)
        again, _ = compiled(x)
    torch.testing.assert_close(out, eager(x)[0])
    torch.testing.assert_close(again, out)
    warnings = [r.getMessage() for r in caplog.records if "--compile" in r.getMessage()]
    assert warnings == ["--compile: torch.compile failed, running the layers eagerly "
                        "(RuntimeError: no C++ compiler found)"]
    assert compiled.compiled_layers.compiled_calls == 0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile")
    words = [f"w{i}" for i in range(30)]
    lines = [" ".join(words[(5 * i + 3 * j) % 30] for j in range(9)) for i in range(60)]
    write_lines(str(root / "text" / "train.txt"), lines)
    write_lines(str(root / "text" / "valid.txt"), lines[:6])
    preprocess(str(root / "text"), str(root / "data"), splits=("train", "valid"))
    return str(root / "data")


def test_fairseq_train_with_compile_takes_the_eager_updates(data, tmp_path):
    """Six SGD updates through fairseq-train: the same weights, with and without --compile (SGD:
    an update is linear in the gradient, so float rounding cannot be amplified as by Adam's
    normalisation of near-zero gradients)."""
    args = [data, "--user-dir", USER_DIR, "--task", "truncated_bptt_lm", "--arch", "transformer_xl",
            "--n-layer", "2", "--d-model", "16", "--n-head", "2", "--d-head", "8", "--d-inner", "32",
            "--cutoffs", "10,30", "--mem-len", "8", "--dropout", "0.0", "--tokens-per-sample", "8",
            "--batch-size", "2", "--optimizer", "sgd", "--lr", "0.5", "--max-update", "6",
            "--disable-validation", "--cpu", "--no-epoch-checkpoints", "--seed", "3",
            "--log-format", "json", "--log-interval", "1"]
    weights = {}
    for flag in ("", "--compile"):
        save_dir = tmp_path / (flag or "eager")
        log = run("fairseq-train", *args, "--save-dir", save_dir, *([flag] if flag else []))
        assert "torch.compile failed" not in log
        records = [parse_record(line) for line in log.splitlines()]
        assert len([r for r in records if r and r["kind"] == "train"]) == 6
        state = torch.load(save_dir / "checkpoint_last.pt", map_location="cpu", weights_only=True)
        assert state["cfg"]["model"]["compile"] is bool(flag)
        weights[flag] = state["model"]
    for name, value in weights[""].items():
        assert_close_normwise(weights["--compile"][name], value)
