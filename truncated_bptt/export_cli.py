"""``truncated-bptt-export``: a trained checkpoint -> self-contained TorchScript scorer.

    truncated-bptt-export checkpoints/checkpoint_best.pt model.ts --data data-bin/wikitext-103 \\
        --mem-len 640 --clamp-len 400

The artefact loads with ``torch.jit.load`` alone (see :mod:`truncated_bptt.torchscript_export`).
"""
import argparse
import logging
import os
import sys

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="truncated-bptt-export", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="fairseq checkpoint of a transformer_xl model")
    p.add_argument("output", help="where to write the TorchScript file (e.g. model.ts)")
    p.add_argument("--data", help="directory holding the model's dict.txt (default: the "
                                  "checkpoint's training data directory)")
    p.add_argument("--mem-len", type=int, help="memory length of the exported scorer "
                                               "(default: the checkpoint's)")
    p.add_argument("--clamp-len", type=int, help="clamp relative distances (default: the checkpoint's)")
    p.add_argument("--same-length", choices=["true", "false"],
                   help="every query sees the same number of keys, by the checkpoint's "
                        "same_length_mask (default: the checkpoint's)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="dtype of the exported weights (log-probs are always fp32)")
    return p.parse_args(argv)


def load_model(checkpoint, data=None, **model_overrides):
    """The checkpoint's model (eval mode, CPU, fp32) with model options overridden."""
    import truncated_bptt  # noqa: F401  (registers the task and model)
    from fairseq import checkpoint_utils

    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
    overrides = {k: v for k, v in model_overrides.items() if v is not None}
    if data is not None:
        if not os.path.isfile(os.path.join(data, "dict.txt")):
            raise FileNotFoundError(f"--data {data!r} has no dict.txt: pass the model's data directory")
        overrides["data"] = data
    try:
        models, _, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint],
                                                                       arg_overrides=overrides)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}; pass --data DIR (the directory with the model's dict.txt)")
    model = models[0].float().eval()
    if model.__class__.__name__ != "TransformerXLLanguageModel":
        raise ValueError(f"{checkpoint} holds a {model.__class__.__name__}, not a transformer_xl model")
    return model, task


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    args = parse_args(argv)
    from truncated_bptt.torchscript_export import export_scorer

    same_length = None if args.same_length is None else args.same_length == "true"
    try:
        model, _ = load_model(args.checkpoint, args.data, mem_len=args.mem_len,
                              clamp_len=args.clamp_len, same_length=same_length)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"truncated-bptt-export: {err}")
    export_scorer(model, args.output, DTYPES[args.dtype])
    cfg = model.decoder.cfg
    logging.getLogger("truncated_bptt.export").info(
        "wrote %s (torch.jit.script, %s, %d layers, mem_len %d, vocabulary %d)", args.output,
        args.dtype, cfg.n_layer, model.decoder.memory_options.mem_len, len(model.decoder.dictionary))


if __name__ == "__main__":
    main()
