"""``truncated-bptt-convert``: Transformer-XL weights from HuggingFace or NVIDIA -> fairseq checkpoint.

    truncated-bptt-convert huggingface transfo-xl-wt103/ converted/ --trust-pickle
    truncated-bptt-convert nvidia checkpoint_best.pt converted/ --trust-pickle
    fairseq-eval-lm converted --user-dir truncated_bptt --task truncated_bptt_lm \\
        --path converted/model.pt ...

Writes ``OUT_DIR/dict.txt`` and ``OUT_DIR/model.pt`` (see :mod:`truncated_bptt.checkpoint_conversion`).
"""
import argparse
import logging
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="truncated-bptt-convert", description=__doc__.split("\n\n")[0])
    p.add_argument("format", choices=["huggingface", "nvidia"], help="where the weights come from")
    p.add_argument("source", help="huggingface: a save_pretrained() directory (config.json, "
                                  "pytorch_model.bin or model.safetensors, vocab.pkl); nvidia: a "
                                  "checkpoint .pt of DeepLearningExamples' Transformer-XL")
    p.add_argument("out_dir", help="directory for dict.txt and the checkpoint")
    p.add_argument("--vocab", help="vocabulary as text (one symbol per line in id order, optional "
                                   "count); replaces vocab.pkl / the checkpoint's pickled vocabulary")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow unpickling vocab.pkl / checkpoints holding Python objects (this runs "
                        "code from the file: only for files from a source you trust)")
    p.add_argument("--eos-symbol", default="<eos>",
                   help="the source's end-of-line symbol, which becomes fairseq's </s>")
    p.add_argument("--unk-symbol", default="<unk>",
                   help="the source's unknown-word symbol, which becomes fairseq's <unk>")
    p.add_argument("--checkpoint-name", default="model.pt", help="file name of the checkpoint")
    for name, kind, what in (("mem-len", int, "memory length"), ("clamp-len", int, "clamp_len"),
                             ("tokens-per-sample", int, "segment length of the task")):
        p.add_argument(f"--{name}", type=kind, help=f"{what} stored in the checkpoint "
                                                    "(default: the source's)")
    p.add_argument("--same-length", choices=["true", "false"], help="same_length stored in the "
                                                                     "checkpoint (default: the source's)")
    return p.parse_args(argv)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(name)s | %(message)s")
    args = parse_args(argv)
    import truncated_bptt  # noqa: F401  (registers the task and model)
    from truncated_bptt import checkpoint_conversion as cc

    try:
        read = cc.read_huggingface if args.format == "huggingface" else cc.read_nvidia
        source = read(args.source, vocab=args.vocab, trust_pickle=args.trust_pickle)
        for key, value in (("mem_len", args.mem_len), ("clamp_len", args.clamp_len)):
            if value is not None:
                source.options[key] = value
        if args.same_length is not None:
            source.options["same_length"] = args.same_length == "true"
        if args.tokens_per_sample is not None:
            source.tokens_per_sample = args.tokens_per_sample
        cc.convert(source, args.out_dir, eos_symbol=args.eos_symbol, unk_symbol=args.unk_symbol,
                   checkpoint_name=args.checkpoint_name)
    except (FileNotFoundError, ValueError, KeyError) as err:
        sys.exit(f"truncated-bptt-convert: {err}")


if __name__ == "__main__":
    main()
