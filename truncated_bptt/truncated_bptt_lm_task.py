"""Task ``truncated_bptt_lm``: language modelling on ordered streams for a model with memory.

The split's tokens, in order, are cut into ``batch_size x world_size`` contiguous streams; each
training (or validation, or fairseq-eval-lm) step gives every stream its next ``tokens_per_sample``
tokens, so a Transformer-XL's memory always holds the text that really came before
(:mod:`truncated_bptt.stream_dataset`). Batches carry ``memory_key`` (the split name) and
``segment_index`` (0 at the start of every pass), so the model keeps one memory per split and
empties it at the start of each pass: training memory never reaches validation and vice versa.

Checkpoints taken mid-epoch hold the stream position and the streams' memory (gathered from all
data-parallel ranks for the checkpoints fairseq-train will write), so ``--restore-file`` continues
exactly where the run stopped (:mod:`truncated_bptt.stream_iterator`,
:mod:`truncated_bptt.stream_memory`).
"""
import logging
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

import torch
from fairseq import utils
from fairseq.data import Dictionary
from fairseq.data.indexed_dataset import get_available_dataset_impl
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, OmegaConf

from truncated_bptt import generation
from truncated_bptt import setup_checks, vocabulary_check  # wrong inputs, resume (issue 15)
from truncated_bptt import word_perplexity  # fairseq-eval-lm --word-pieces (issue 16)
from truncated_bptt.example_layout import ExampleLayoutDataset
from truncated_bptt.checkpoint_schedule import SaveSchedule
from truncated_bptt.cpu_heap import keep_freed_memory, return_freed_memory
from truncated_bptt.stream_dataset import StreamDataset
from truncated_bptt.stream_iterator import StreamEpochBatchIterator
from truncated_bptt.stream_memory import StreamMemoryKeeper
from truncated_bptt.tf32 import configure_tf32
from truncated_bptt.token_stream import TokenStream

logger = logging.getLogger(__name__)


# fairseq-eval-lm's automatic --eval-segments-per-step fills a step up to this many positions: at
# the benchmark shape (batch 1, 64 tokens) 8 segments, about twice the speed of one (BENCHMARKS.md);
# a batch of 8 streams already had as many positions per step, so its memory stays as it was.
EVAL_STEP_POSITIONS = 512


@dataclass
class TruncatedBPTTLMConfig(FairseqDataclass):
    data: str = field(
        default="???",
        metadata={
            "help": "fairseq-preprocess output directory; several joined by ':' are used in turn, "
            "one per epoch (validation always uses the first)"
        },
    )
    tokens_per_sample: int = field(
        default=192,
        metadata={"help": "tokens of each stream per step (the truncated BPTT segment length)"},
    )
    disable_tf32: bool = field(
        default=False,
        metadata={"help": "keep fp32 matmuls in full fp32 precision (TF32 is on by default)"},
    )
    release_freed_memory: bool = field(
        default=False,
        metadata={"help": "CPU training: leave glibc's allocator as it is, returning freed large "
                          "blocks to the kernel at once. By default training on CPU keeps freed "
                          "blocks below 1 GiB in the process's heap, so steps do not page-fault "
                          "their large tensors in again (process-wide; docs/task.md)"},
    )
    data_layout: ChoiceEnum(["streams", "fairseq_example"]) = field(
        default="streams",
        metadata={"help": "streams: contiguous streams in which every token is a target once; "
                          "fairseq_example: the batches of fairseq's examples/truncated_bptt "
                          "(blocks of --tokens-per-sample tokens, the first of each never a "
                          "target), to reproduce that example's runs exactly"},
    )
    eval_segments_per_step: int = field(
        default=0,
        metadata={"help": "fairseq-eval-lm: consecutive segments of --tokens-per-sample tokens "
                          "every stream gives the model per step. The model scores them in turn, "
                          "each over the memory the previous left, so the scores are those of one "
                          "segment per step (to rounding), but runs each layer's matrix products "
                          "and the softmax once per step for all of them (docs/model.md). 0 (auto): "
                          f"as many as make {EVAL_STEP_POSITIONS} positions per step (streams x "
                          "segments x tokens per sample), at least 1; 1: one segment per step "
                          "(always with --data-layout fairseq_example)"},
    )
    carry_memory: bool = field(
        default=False,
        metadata={"help": "fairseq-interactive: generate each input over the memory left by the "
                          "previous inputs and their outputs (one input per batch)"},
    )
    dataset_impl: Optional[ChoiceEnum(get_available_dataset_impl())] = II("dataset.dataset_impl")
    # Read (not set) here to know when fairseq-train will write a mid-epoch checkpoint, so that
    # the memory of all ranks is gathered in time (truncated_bptt/checkpoint_schedule.py); not
    # command-line options of the task.
    save_interval_updates: int = II("checkpoint.save_interval_updates")
    max_update: int = II("optimization.max_update")
    validate_after_updates: int = II("dataset.validate_after_updates")
    no_save: bool = II("checkpoint.no_save")
    patience: int = II("checkpoint.patience")
    stop_time_hours: float = II("optimization.stop_time_hours")
    amp: bool = II("common.amp")
    # fairseq-eval-lm / -generate / -interactive 0.12 honour --fp16 but ignore --bf16: the task
    # casts the model it builds (fairseq-train casts it the same way itself).
    bf16: bool = II("common.bf16")
    fp16: bool = II("common.fp16")
    # ---- fairseq-eval-lm: per-word figures of subword models (truncated_bptt/word_perplexity.py)
    word_pieces: Optional[ChoiceEnum(list(word_perplexity.SCHEMES))] = field(
        default=None,
        metadata={"help": "fairseq-eval-lm: also report loss and perplexity per word, the tokens "
                          "being sentencepiece or subword_nmt pieces (every </s> counts as a word)"},
    )
    post_process: Optional[str] = II("common_eval.post_process")  # refused for sentencepiece


@register_task("truncated_bptt_lm", dataclass=TruncatedBPTTLMConfig)
class TruncatedBPTTLMTask(FairseqTask):
    """Language modelling with truncated BPTT over ordered, per-rank streams."""

    def __init__(self, cfg: TruncatedBPTTLMConfig, dictionary: Dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.memory_keeper = StreamMemoryKeeper(
            self._save_schedule(),
            loss_scaling=bool(self._root_setting("fp16") or self._root_setting("amp"))
            and not self._root_setting("bf16"),
        )
        self._warned_max_tokens = False
        self.word_scores = word_perplexity.from_task_config(cfg, dictionary)  # --word-pieces

    @classmethod
    def setup_task(cls, cfg: TruncatedBPTTLMConfig, **kwargs):
        setup_checks.check_task_setup(cfg, TruncatedBPTTLMConfig, **kwargs)
        if cfg.tokens_per_sample <= 0:
            raise ValueError(
                f"--tokens-per-sample must be positive (got {cfg.tokens_per_sample}); "
                "fairseq-eval-lm subtracts --context-window from it, which this task does not use: "
                "set the model's mem_len (--model-overrides \"{'mem_len': N}\") instead"
            )
        paths = utils.split_paths(cfg.data)
        for path in paths:
            if not os.path.isdir(path):
                raise FileNotFoundError(
                    f"data directory {path!r} does not exist: pass the --destdir of "
                    "fairseq-preprocess --only-source (several joined by ':')"
                )
        dictionary = cls._load_dictionary(paths[0])
        for path in paths[1:]:
            if cls._load_dictionary(path).symbols != dictionary.symbols:
                raise ValueError(
                    f"the dictionary of {path} differs from that of {paths[0]}: preprocess every "
                    f"shard with one dictionary (fairseq-preprocess --srcdict {paths[0]}/dict.txt)"
                )
        logger.info("dictionary: %d types", len(dictionary))
        configure_tf32(not cfg.disable_tf32)
        return cls(cfg, dictionary)

    @staticmethod
    def _load_dictionary(path):
        filename = os.path.join(path, "dict.txt")
        if not os.path.isfile(filename):
            raise FileNotFoundError(
                f"no dictionary {filename}: make the data directory with "
                "fairseq-preprocess --only-source --destdir DIR"
            )
        return Dictionary.load(filename)

    @property
    def source_dictionary(self):
        return self.dictionary

    @property
    def target_dictionary(self):
        return self.dictionary

    def max_positions(self):
        return None  # any length: segments are read with the model's memory

    # ---- data --------------------------------------------------------------------------------
    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        """Load ``split`` of the data directory of this epoch (``a:b:c`` rotate per epoch)."""
        paths = utils.split_paths(self.cfg.data)
        path = paths[(epoch - 1) % len(paths)]
        stream = TokenStream.load(
            os.path.join(path, split), self.dictionary, name=split, combine=combine,
            dataset_impl=self._root_setting("dataset_impl", int_value=False),
        )
        if stream is None:
            raise FileNotFoundError(
                f"split {split!r} not found in {path} (no {split}.bin/.idx): preprocess it "
                "(fairseq-preprocess --trainpref/--validpref/--testpref) or name existing splits "
                "with --train-subset/--valid-subset/--gen-subset"
            )
        if len(stream) == 0:
            raise ValueError(
                f"split {split!r} in {path} is empty (0 tokens): preprocess a non-empty text file "
                "for it"
            )
        logger.info("%s: %s tokens from %s", split, f"{len(stream):,}", stream.source)
        self.datasets[split] = stream

    def get_batch_iterator(
        self, dataset, max_tokens=None, max_sentences=None, max_positions=None,
        ignore_invalid_inputs=False, required_batch_size_multiple=1, seed=1, num_shards=1,
        shard_id=0, num_workers=0, epoch=1, data_buffer_size=0, disable_iterator_cache=False,
        skip_remainder_batch=False, grouped_shuffling=False, update_epoch_batch_itr=False,
        segments_per_step=1, **kwargs,
    ):
        """Steps of ``dataset`` (a TokenStream) for this rank: ``max_sentences`` streams per rank,
        ``num_shards`` ranks, ``segments_per_step`` segments of every stream per step (only in the
        streams layout). Never shuffled; ``seed``, ``max_positions``, batching by size and
        ``num_workers`` / ``data_buffer_size`` (there is nothing to load) do not apply. Other
        datasets (fairseq-interactive prompts) are batched as fairseq does."""
        if not isinstance(dataset, TokenStream):
            return super().get_batch_iterator(
                dataset, max_tokens=max_tokens, max_sentences=max_sentences,
                max_positions=max_positions, ignore_invalid_inputs=ignore_invalid_inputs,
                required_batch_size_multiple=required_batch_size_multiple, seed=seed,
                num_shards=num_shards, shard_id=shard_id, num_workers=num_workers, epoch=epoch,
                data_buffer_size=data_buffer_size, disable_iterator_cache=disable_iterator_cache,
            )
        if max_sentences is None:
            if max_tokens is not None:
                raise ValueError(
                    "truncated_bptt_lm batches by streams, not by --max-tokens: set --batch-size "
                    "(streams per GPU; a step has --batch-size x --tokens-per-sample tokens)"
                )
            raise ValueError("truncated_bptt_lm needs --batch-size (streams per GPU)")
        if max_tokens is not None and not self._warned_max_tokens:
            self._warned_max_tokens = True
            logger.warning(
                "--max-tokens is ignored by truncated_bptt_lm: a step has --batch-size x "
                "--tokens-per-sample tokens"
            )
        num_streams = max_sentences * num_shards
        if len(dataset) < num_streams:
            raise ValueError(
                f"split {dataset.name!r} has {len(dataset)} tokens, fewer than its "
                f"{num_streams} streams (--batch-size {max_sentences} x {num_shards} processes) "
                "need: lower --batch-size (--batch-size-valid for validation)"
            )
        layout_args = dict(pad=self.dictionary.pad(), eos=self.dictionary.eos(), memory_key=dataset.name)
        if self._root_setting("data_layout", int_value=False) == "fairseq_example":
            layout = ExampleLayoutDataset
        else:
            layout = StreamDataset
            layout_args["segments_per_step"] = segments_per_step
        streams = layout(dataset.tokens, self.cfg.tokens_per_sample, max_sentences, num_shards,
                         shard_id, **layout_args)
        # A step's batch is two slices of a tensor already in memory (microseconds): a data-loader
        # worker process (fairseq's default --num-workers 1) or prefetching thread only competes
        # with the model for the CPU, so the streams are always read in the main thread.
        return StreamEpochBatchIterator(
            streams, epoch=epoch, num_workers=0, buffer_size=0,
            skip_remainder_batch=skip_remainder_batch, memory_keeper=self.memory_keeper,
        )

    def eval_lm_dataloader(
        self, dataset, max_tokens: Optional[int] = 36000, batch_size: Optional[int] = None,
        max_positions: Optional[int] = None, num_shards: int = 1, shard_id: int = 0,
        num_workers: int = 1, data_buffer_size: int = 10, context_window: int = 0,
    ):
        """fairseq-eval-lm: ``batch_size`` streams (1 if unset) scored in order, each token once,
        ``--eval-segments-per-step`` segments of each per step (0: up to ``EVAL_STEP_POSITIONS``
        positions per step).

        ``max_tokens`` (fairseq-eval-lm always passes one) and ``max_positions`` do not apply.
        """
        if context_window > 0:
            raise ValueError(
                "--context-window does not apply to truncated_bptt_lm: every token is scored once "
                "with the model's memory as its context; enlarge that with "
                "--model-overrides \"{'mem_len': N}\" instead"
            )
        streams = batch_size or 1
        segments = self.cfg.eval_segments_per_step
        if not isinstance(segments, int) or segments < 0:
            raise ValueError(f"--eval-segments-per-step must be 0 (auto) or a positive integer, "
                             f"got {segments!r}")
        if self._root_setting("data_layout", int_value=False) == "fairseq_example":
            segments = 1  # the example's blocks are scored one per step
        elif segments == 0:
            segments = max(1, EVAL_STEP_POSITIONS // (streams * self.cfg.tokens_per_sample))
        logger.info(
            "scoring %s in %d stream(s) of ~%s tokens, segments of %d tokens, %d per step",
            dataset.name, streams * num_shards, f"{len(dataset) // (streams * num_shards):,}",
            self.cfg.tokens_per_sample, segments,
        )
        batches = self.get_batch_iterator(
            dataset, max_sentences=streams, num_shards=num_shards, shard_id=shard_id,
            num_workers=num_workers, data_buffer_size=data_buffer_size, segments_per_step=segments,
        ).next_epoch_itr(shuffle=False)
        return_freed_memory()  # what loading the checkpoint freed (cpu_heap.py)
        return word_perplexity.eval_lm_batches(self.cfg, self.word_scores, batches)  # --word-pieces

    # ---- generation (fairseq-generate / fairseq-interactive): truncated_bptt/generation.py ------
    def build_dataset_for_inference(self, src_tokens, src_lengths, **kwargs):
        """fairseq-interactive prompts: ``[eos] + line`` each, forced as the generation prefix."""
        return generation.build_prompt_dataset(self.dictionary, src_tokens, src_lengths)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None, **kwargs):
        """fairseq's SequenceGenerator, reading prompts in parallel (and carrying memory across
        inputs with --carry-memory): :class:`generation.PromptSequenceGenerator`."""
        extra = dict(extra_gen_cls_kwargs or {}, chunk=self.cfg.tokens_per_sample,
                     carry_memory=self.cfg.carry_memory)
        return super().build_generator(models, args, seq_gen_cls=generation.PromptSequenceGenerator,
                                       extra_gen_cls_kwargs=extra, **kwargs)

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        if constraints is not None:
            raise ValueError("truncated_bptt_lm does not support --constraints; drop the option")
        return generator.generate_after_prompts(models, sample, prefix_tokens, self.dictionary.eos())

    # ---- model and criterion -----------------------------------------------------------------
    def build_model(self, cfg, from_checkpoint=False):
        """The model, in bf16 with --bf16 (fairseq-eval-lm/-generate would otherwise score in fp32)."""
        model = super().build_model(cfg, from_checkpoint=from_checkpoint)
        vocabulary_check.refuse_other_vocabulary_on_load(model, len(self.dictionary), self.cfg.data)
        if self._root_setting("bf16") and not self._root_setting("fp16"):
            model = model.to(torch.bfloat16)
        if self.word_scores is not None:  # --word-pieces: fairseq-eval-lm's scores, per word
            self.word_scores.watch(model)
        return model

    def build_criterion(self, cfg):
        """fairseq's default ``cross_entropy`` becomes ``adaptive_cross_entropy`` (same loss)."""
        from fairseq import criterions

        if getattr(cfg, "_name", None) == "cross_entropy":
            logger.info(
                "criterion cross_entropy -> adaptive_cross_entropy: same loss, computed only for "
                "the targets' adaptive-softmax clusters instead of full-vocabulary logits"
            )
            cfg = OmegaConf.create(
                {"_name": "adaptive_cross_entropy", "sentence_avg": cfg.sentence_avg}
            )
        return criterions.build_criterion(cfg, self)

    # ---- training hooks: keep the training streams' memory checkpointable --------------------
    def train_step(
        self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs
    ):
        if ignore_grad:
            # fairseq's stand-in batch (a copy of the first batch, used when a rank has none):
            # run it without memory so it can neither reset nor advance the training streams.
            sample = {**sample, "net_input": {**sample["net_input"], "memory_key": None}}
            return super().train_step(
                sample, model, criterion, optimizer, update_num, ignore_grad=True, **kwargs
            )
        if not self.cfg.release_freed_memory and sample["net_input"]["src_tokens"].device.type == "cpu":
            keep_freed_memory()  # once per process (truncated_bptt/cpu_heap.py)
        self.memory_keeper.before_train_forward(model, sample)
        result = super().train_step(
            sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs
        )
        self.memory_keeper.after_train_forward(update_num)
        return result

    def optimizer_step(self, optimizer, model, update_num):
        super().optimizer_step(optimizer, model, update_num)
        self.memory_keeper.after_update(update_num + 1)

    def _save_schedule(self) -> SaveSchedule:
        """When fairseq-train saves (the defaults where the task config stands alone)."""
        patience = self._root_setting("patience", int_value=False)
        return SaveSchedule(
            save_interval_updates=self._root_setting("save_interval_updates"),
            max_update=self._root_setting("max_update"),
            validate_after_updates=self._root_setting("validate_after_updates"),
            no_save=bool(self._root_setting("no_save")),
            patience=-1 if patience is None else int(patience),
            stop_time_hours=float(self._root_setting("stop_time_hours", int_value=False) or 0),
        )

    def _root_setting(self, name, int_value=True):
        """A setting the task reads from fairseq's other config groups: an int (0 when unset) or
        the value (None when unset); unavailable for a task config built on its own."""
        try:
            value = getattr(self.cfg, name)
        except Exception:  # an interpolation without its root config
            value = None
        if isinstance(value, str) and value.startswith("${"):  # a plain dataclass instance
            value = None
        if isinstance(value, Enum):
            value = value.value
        return int(value or 0) if int_value else value

    def begin_valid_epoch(self, epoch, model):
        super().begin_valid_epoch(epoch, model)
        self.memory_keeper.before_validation()
