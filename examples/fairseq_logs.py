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
``--log-file`` files and hydra's ``hydra_train.log``; and fairseq-eval-lm's summary and its
``--output-word-probs`` lines. Every test, example and benchmark of the repository reads fairseq's
output through this module.
"""
import json
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
            if "valid_loss" in data:
                kind, prefix = "valid", "valid_"
            elif "update" in data and "loss" in data:
                kind, prefix = "train", ""
            elif "train_loss" in data:
                kind, prefix = "epoch", "train_"
            else:
                return None
            fields = {k[len(prefix):]: _number(str(v)) for k, v in data.items() if k.startswith(prefix)}
            fields = {k: v for k, v in fields.items() if v is not None}
            return dict(fields, kind=kind) if "num_updates" in fields else None
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
    tokens, "seconds": ..., "tokens_per_s": ...}`` (the time is fairseq's timer of the scoring)."""
    losses, evaluated = list(_EVAL_LM.finditer(output)), list(_EVALUATED.finditer(output))
    if not losses or not evaluated:
        missing = "'Loss (base 2): ..., Perplexity: ...'" if not losses else \
            "'Evaluated N tokens in Ss (R tokens/s)'"
        raise ValueError(f"no {missing} line in fairseq-eval-lm's output")
    loss, speed = losses[-1], evaluated[-1]
    tokens = int(speed.group("tokens").replace(",", ""))
    tokens_per_s = float(speed.group("tokens_per_s"))
    return {"loss": float(loss.group("loss")), "ppl": float(loss.group("ppl")), "tokens": tokens,
            # fairseq prints the seconds with one decimal: derived from tokens/s (two) when it can
            "seconds": tokens / tokens_per_s if tokens_per_s > 0 else float(speed.group("seconds")),
            "tokens_per_s": tokens_per_s}


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
