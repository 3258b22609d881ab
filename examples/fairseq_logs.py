"""Read fairseq's training logs and fairseq-eval-lm's output.

fairseq writes one progress record per ``--log-interval`` updates (logger ``train_inner``), one per
validation (``valid``) and one per epoch (``train``: the epoch's averages), in the ``--log-format``
chosen:

* ``simple`` / ``tqdm``::

    ... | train_inner | epoch 001:    100 / 196 loss=7.777, ppl=219.4, ..., num_updates=100, ...
    ... | valid | epoch 001 | valid on 'valid' subset | loss 4.402 | ppl 21.14 | ... | num_updates 196
    ... | train | epoch 001 | loss 6.417 | ppl 85.42 | ... | num_updates 196 | ...

* ``json``::

    ... | train_inner | {"epoch": 1, "update": 0.51, "loss": "7.777", ..., "num_updates": "100", ...}
    ... | valid | {"epoch": 1, "valid_loss": "4.402", ..., "valid_num_updates": "196"}
    ... | train | {"epoch": 1, "train_loss": "6.417", ..., "train_num_updates": "196"}

Losses are in base 2 (``ppl = 2 ** loss``). This reads any mix of these from stdout captures,
``--log-file`` files and hydra's ``hydra_train.log``; with several ``--valid-subset``s each
validation record names its subset. :func:`read_tensorboard_dir` reads the same records from a
``--tensorboard-logdir`` directory. It also reads fairseq-eval-lm's summary and its
``--output-word-probs`` lines. Every test, example and benchmark of the repository reads fairseq's
output through this module.
"""
import json
import os
import re
from typing import Dict, List, Optional, Tuple

KINDS = ("train", "valid", "epoch")  # train_inner records, validations, end-of-epoch averages

_INNER = re.compile(r"epoch \d+:\s+\d+ / \d+ (?P<fields>.*)$")
_VALID = re.compile(r"valid on '(?P<subset>[^']+)' subset \| (?P<fields>.*)$")
# "... | train | epoch 001 | loss ..." (fairseq's logging) or
# "[...][train][INFO] - epoch 001 | loss ..." (hydra's)
_EPOCH = re.compile(r"(?:\| train \||\]\[train\]\[\w+\] -) epoch \d+ \| (?P<fields>.*)$")
_EVAL_LM = re.compile(r"Loss \(base 2\): (?P<loss>[\d.]+), Perplexity: (?P<ppl>[\d.]+)")
_EVALUATED = re.compile(r"Evaluated (?P<tokens>[\d,]+) tokens in (?P<seconds>[\d.]+)s "
                        r"\((?P<tokens_per_s>[\d.]+) tokens/s\)")
# --output-word-probs: "... | fairseq_cli.eval_lm | ID w [lp]\tw [lp]..." (or "...eval_lm:ID ...")
_WORD_PROBS = re.compile(r"fairseq_cli\.eval_lm(?: \| |:)(?P<id>\d+) (?P<words>.*\[.*)$")
_WORD_PROB = re.compile(r"(\S+) \[(-?(?:[\d.]+(?:e[-+]?\d+)?|inf))\]")
_EVAL_LM_WORDS = re.compile(r"Word-level loss \(base 2\): (?P<loss>[\d.]+), word-level perplexity: "
                            r"(?P<ppl>[\d.]+) \((?P<scheme>\w+) pieces merged: (?P<words>[\d,]+) words"
                            r".*?, over (?P<pieces>[\d,]+) scored tokens\)")


def _number(text: str) -> Optional[float]:
    try:
        return float(text)
    except ValueError:
        return None


def _pairs(text: str, item_sep: str, key_sep: str) -> Dict[str, float]:
    out = {}
    for item in text.split(item_sep):
        key, _, value = item.strip().partition(key_sep)
        number = _number(value.strip())
        if key and number is not None:
            out[key.strip()] = number
    return out


def parse_record(line: str) -> Optional[Dict]:
    """One log line -> ``{"kind": "train"|"valid"|"epoch", "num_updates": n, "loss": ...,
    "ppl": ...}`` (every numeric field, prefixes such as ``valid_`` removed), or None for other
    lines."""
    brace = line.find("{")
    if brace >= 0 and line.rstrip().endswith("}"):
        try:
            data = json.loads(line[brace:])
        except ValueError:
            data = None
        if isinstance(data, dict):
            subset = _json_valid_subset(data)
            if subset is not None:
                kind, prefix = "valid", subset + "_"
            elif "update" in data and "loss" in data:
                kind, prefix = "train", ""
            elif "train_loss" in data:
                kind, prefix = "epoch", "train_"
            else:
                return None
            fields = {k[len(prefix):]: _number(str(v)) for k, v in data.items() if k.startswith(prefix)}
            fields = {k: v for k, v in fields.items() if v is not None}
            if "num_updates" not in fields:
                return None
            return dict(fields, kind=kind, subset=subset) if subset else dict(fields, kind=kind)
    m = _VALID.search(line)
    if m:
        fields = _pairs(m.group("fields"), "|", " ")
        return dict(fields, kind="valid", subset=m.group("subset")) if "num_updates" in fields else None
    m = _INNER.search(line)
    if m:
        fields = _pairs(m.group("fields"), ",", "=")
        return dict(fields, kind="train") if "num_updates" in fields else None
    m = _EPOCH.search(line)
    if m:
        fields = _pairs(m.group("fields"), "|", " ")
        return dict(fields, kind="epoch") if "num_updates" in fields else None
    return None


def _json_valid_subset(data: Dict) -> Optional[str]:
    """The subset of a JSON validation record (``{"valid_loss": ..., "valid_num_updates": ...}``,
    or ``test_...`` for ``--valid-subset valid,test``); None for training records."""
    for key in data:
        if key.endswith("_loss") and not key.startswith("train_"):
            subset = key[:-len("_loss")]
            if f"{subset}_num_updates" in data:
                return subset
    return None


def parse_training_log(text: str) -> Dict[str, List[Dict]]:
    """``{"train": [...], "valid": [...], "epoch": [...]}``: a log text's records, in order."""
    records: Dict[str, List[Dict]] = {kind: [] for kind in KINDS}
    for line in text.splitlines():
        record = parse_record(line)
        if record is not None:
            records[record["kind"]].append(record)
    return records


def read_training_log(path: str) -> Dict[str, List[Dict]]:
    """:func:`parse_training_log` of a log file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse_training_log(f.read())


def by_update(records: List[Dict], field: str = "loss") -> Dict[int, float]:
    """``{num_updates: record[field]}`` (e.g. the training losses of ``records["train"]``)."""
    return {int(r["num_updates"]): r[field] for r in records}


def final_update(records: Dict[str, List[Dict]]) -> int:
    """The number of updates a run reached: the largest ``num_updates`` of any record."""
    updates = [r["num_updates"] for kind in records.values() for r in kind]
    if not updates:
        raise ValueError("no training, validation or epoch record (num_updates) in the log")
    return int(max(updates))


def parse_eval_lm(output: str) -> Dict[str, float]:
    """fairseq-eval-lm's summary -> ``{"loss": base-2 loss, "ppl": perplexity, "tokens": scored
    tokens, "seconds": ..., "tokens_per_s": ...}`` (per token; bits per character for a
    character-level model; the time is fairseq's timer of the scoring), and ``word_loss``,
    ``word_ppl``, ``words`` and ``pieces`` (the scored tokens they merge) when ``--word-pieces``
    reported per-word figures."""
    losses, evaluated = list(_EVAL_LM.finditer(output)), list(_EVALUATED.finditer(output))
    if not losses or not evaluated:
        missing = "'Loss (base 2): ..., Perplexity: ...'" if not losses else \
            "'Evaluated N tokens in Ss (R tokens/s)'"
        raise ValueError(f"no {missing} line in fairseq-eval-lm's output")
    loss, speed = losses[-1], evaluated[-1]
    tokens = int(speed.group("tokens").replace(",", ""))
    tokens_per_s = float(speed.group("tokens_per_s"))
    result = {"loss": float(loss.group("loss")), "ppl": float(loss.group("ppl")), "tokens": tokens,
              # fairseq prints the seconds with one decimal: derived from tokens/s (two) when it can
              "seconds": tokens / tokens_per_s if tokens_per_s > 0 else float(speed.group("seconds")),
              "tokens_per_s": tokens_per_s}
    words = list(_EVAL_LM_WORDS.finditer(output))
    if words:
        w = words[-1]
        result.update(word_loss=float(w.group("loss")), word_ppl=float(w.group("ppl")),
                      words=int(w.group("words").replace(",", "")),
                      pieces=int(w.group("pieces").replace(",", "")))
    return result


def parse_word_probs(output: str) -> Dict[int, List[Tuple[str, float]]]:
    """fairseq-eval-lm ``--output-word-probs`` lines -> ``{sample id: [(word, natural-log
    probability), ...]}`` (fairseq prints the log-probabilities in base e, to 6 decimals)."""
    out: Dict[int, List[Tuple[str, float]]] = {}
    for line in output.splitlines():
        m = _WORD_PROBS.search(line)
        if m:
            words = [(w, float(lp)) for w, lp in _WORD_PROB.findall(m.group("words"))]
            out.setdefault(int(m.group("id")), []).extend(words)
    return out


# ---- tensorboard -------------------------------------------------------------------------------
# fairseq's --tensorboard-logdir DIR writes one event directory per progress-bar tag: DIR/train_inner
# (every --log-interval updates), DIR/train (end of epoch) and DIR/<subset> for every validation
# subset (DIR/valid, DIR/test, ...), each scalar under its plain name ("loss", "ppl", "lr", ...)
# at step num_updates.
_TRAIN_TAGS = {"train_inner": "train", "train": None}  # epoch averages are not curve points


def is_tensorboard_dir(path: str) -> bool:
    """Whether ``path`` is a directory holding tensorboard event files (at any depth)."""
    if not os.path.isdir(path):
        return False
    return any(name.startswith("events.out.tfevents") for _, _, files in os.walk(path)
               for name in files)


def _scalars_by_step(event_dir: str) -> Dict[int, Dict[str, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(event_dir, size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    steps: Dict[int, Dict[str, float]] = {}
    for tag in events.Tags()["scalars"]:
        for event in events.Scalars(tag):
            steps.setdefault(event.step, {})[tag] = event.value
    return steps


def read_tensorboard_dir(path: str) -> Dict[str, List[Dict]]:
    """The records of :func:`read_training_log` from fairseq's ``--tensorboard-logdir`` ``path``:
    ``train`` from ``train_inner``, ``valid`` from every other tag but ``train`` (each record
    naming its ``subset``), ordered by update. Needs the ``tensorboard`` package."""
    records: Dict[str, List[Dict]] = {kind: [] for kind in KINDS}  # (no epoch records here)
    for tag in sorted(os.listdir(path), key=lambda t: (t != "valid", t)):
        event_dir = os.path.join(path, tag)
        if not is_tensorboard_dir(event_dir):
            continue
        kind = _TRAIN_TAGS.get(tag, "valid")
        if kind is None:
            continue
        for step, fields in sorted(_scalars_by_step(event_dir).items()):
            record = dict(fields, num_updates=step, kind=kind)
            records[kind].append(dict(record, subset=tag) if kind == "valid" else record)
    records["valid"].sort(key=lambda r: r["num_updates"])
    return records
