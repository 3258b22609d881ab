"""Write the weights fairseq-train starts from as a checkpoint at update 0, for --finetune-from-model.

Runs inside ONE environment and ONE implementation, like benchmarks/train_step_speed.py: the
fairseq-train arguments after `--` (with their `--user-dir`) decide which model is built.

    # fairseq's example: its fresh model, and the HuggingFace config its decoder wraps
    .venv/bench-example/bin/python benchmarks/initial_checkpoint.py init-example.pt \
        --save-transformers-config init-example.json -- DATA --user-dir <example> ...
    # ours: the same weights, converted
    .venv/py310/bin/python benchmarks/initial_checkpoint.py init-ours.pt \
        --from-example init-example.pt init-example.json -- DATA --user-dir truncated_bptt ...

The task, model and criterion are built as fairseq_cli/train.py builds them (the same seeding, in
the same order), so the weights are those `fairseq-train <the same arguments>` would start from;
fairseq's Trainer writes them (its checkpoint layout, update 0, the training iterator at its start).
`fairseq-train --finetune-from-model` loads the weights and resets optimizer, lr scheduler, meters
and data loader. The file holds no training time, so a --stop-time-hours budget starts at zero.

--from-example replaces our fresh weights by the example's (its decoder's TransfoXLLMHeadModel,
`decoder.model.*`) through truncated_bptt.checkpoint_conversion; both sides read the same fairseq
dictionary, so token ids map to themselves.
"""
import argparse
import json
import logging
import sys

import numpy as np

EXAMPLE_PREFIX = "decoder.model."  # fairseq's example: the TransfoXLLMHeadModel inside its decoder


def example_weights(model, task, cfg, checkpoint: str, transformers_config: str) -> None:
    """Load the example's weights of ``checkpoint`` into our fresh ``model`` (strictly)."""
    from fairseq import checkpoint_utils

    from truncated_bptt import checkpoint_conversion as cc
    from truncated_bptt.transformer_xl_model import clip_cutoffs

    with open(transformers_config, encoding="utf-8") as f:
        hf_config = json.load(f)
    saved = checkpoint_utils.load_checkpoint_to_cpu(checkpoint)["model"]
    hf_state = {k[len(EXAMPLE_PREFIX):]: v for k, v in saved.items() if k.startswith(EXAMPLE_PREFIX)}
    symbols = task.target_dictionary.symbols
    source = cc.huggingface_source(hf_state, hf_config, symbols)
    state, options = cc.fairseq_state(source, cc.fairseq_vocabulary(symbols, source.options["cutoffs"]))
    # What the weights do not show (the forward's options) must agree too.
    ours = {name: getattr(cfg.model, name) for name in options}
    ours["d_embed"] = cfg.model.d_embed if cfg.model.d_embed > 0 else cfg.model.d_model
    ours["cutoffs"] = clip_cutoffs(list(cfg.model.cutoffs), len(symbols))
    differ = [f"{name} {ours[name]} (ours) vs {options[name]} (example)"
              for name in options if ours[name] != options[name]]
    if differ:
        raise SystemExit(f"initial_checkpoint: {checkpoint} is not the model these arguments build: "
                         + "; ".join(differ))
    model.load_state_dict(state, strict=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="then -- and the fairseq-train arguments")
    parser.add_argument("out", help="checkpoint to write")
    parser.add_argument("--save-transformers-config", metavar="JSON",
                        help="fairseq's example: also write the config of its HuggingFace model")
    parser.add_argument("--from-example", nargs=2, metavar=("CHECKPOINT", "JSON"),
                        help="ours: take the weights of this example checkpoint (with the config "
                             "--save-transformers-config wrote)")
    argv = sys.argv[1:]
    if "--" not in argv:
        parser.error("give the fairseq-train arguments after --")
    args = parser.parse_args(argv[:argv.index("--")])
    fairseq_args = argv[argv.index("--") + 1:]
    logging.basicConfig(format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                        level=logging.INFO, stream=sys.stdout)

    from fairseq import options, tasks, utils
    from fairseq.dataclass.initialize import add_defaults
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.logging import metrics
    from fairseq.trainer import Trainer

    # fairseq_cli/train.py's cli_main and main, up to the trainer.
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), fairseq_args))
    utils.import_user_module(cfg.common)
    add_defaults(cfg)
    metrics.reset()
    np.random.seed(cfg.common.seed)
    utils.set_torch_seed(cfg.common.seed)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)

    if args.save_transformers_config:
        if not hasattr(getattr(model.decoder, "model", None), "config"):
            raise SystemExit("initial_checkpoint: --save-transformers-config is for fairseq's example (a "
                             "decoder wrapping a HuggingFace model); these arguments built another model")
        with open(args.save_transformers_config, "w", encoding="utf-8") as f:
            json.dump(model.decoder.model.config.to_dict(), f, indent=1)
    if args.from_example:
        example_weights(model, task, cfg, *args.from_example)
    trainer = Trainer(cfg, task, model, criterion)
    epoch_itr = trainer.get_train_iterator(epoch=1, load_dataset=True,
                                           disable_iterator_cache=task.has_sharded_data("train"))
    epoch_itr.next_epoch_itr(shuffle=False)  # epoch 1 begun, no batch taken: as at update 0
    trainer.consolidate_optimizer()  # as fairseq's checkpoint_utils.save_checkpoint, before saving
    trainer.save_checkpoint(args.out, {"train_iterator": epoch_itr.state_dict(), "previous_training_time": 0})
    print(f"initial_checkpoint: wrote {args.out} ({sum(p.numel() for p in model.parameters()):,} "
          "parameters, update 0)", flush=True)


if __name__ == "__main__":
    main()
