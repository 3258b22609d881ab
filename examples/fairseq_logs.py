"""Read fairseq's training logs and fairseq-eval-lm's output.

fairseq writes one progress record per ``--log-interval`` updates (logger ``train_inner``), one per
validation (``valid``) and one per epoch (``train``), in the ``--log-format`` chosen:

* ``simple`` / ``tqdm``::

    ... | train_inner | epoch 001:    100 / 196 loss=7.777, ppl=219.4, ..., num_updates=100, ...
    ... | valid | epoch 001 | valid on 'valid' subset | loss 4.402 | ppl 21.14 | ... | num_updates 196

* ``json``::

    ... | train_inner | {"epoch": 1, "update": 0.51, "loss": "7.777", ..., "num_updates": "100", ...}
    ... | valid | {"epoch": 1, "valid_loss": "4.402", ..., "valid_num_updates": "196"}

Losses are in base 2 (``ppl = 2 ** loss``). This reads any mix of these from stdout captures,
``--log-file`` files and hydra's ``hydra_train.log``.
"""
import json
import re
from typing import Dict, List, Optional

_INNER = re.compile(r"epoch \d+:\s+\d+ / \d+ (?P<fields>.*)$")
_VALID = re.compile(r"valid on '(?P<subset>[^']+)' subset \| (?P<fields>.*)$")
_EVAL_LM = re.compile(r"Loss \(base 2\): (?P<loss>[\d.]+), Perplexity: (?P<ppl>[\d.]+)")
_EVAL_SPEED = re.compile(r"Evaluated (?P<tokens>[\d,]+) tokens in [\d.]+s \((?P<rate>[\d.]+) tokens/s\)")


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
    """One log line -> ``{"kind": "train"|"valid", "num_updates": n, "loss": ..., "ppl": ...}``
    (every numeric field, prefixes such as ``valid_`` removed), or None for other lines."""
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
            else:
                return None  # end-of-epoch averages ("train_loss") or something else
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
    return None


def read_training_log(path: str) -> Dict[str, List[Dict]]:
    """``{"train": [records...], "valid": [records...]}`` in file order."""
    records: Dict[str, List[Dict]] = {"train": [], "valid": []}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            record = parse_record(line)
            if record is not None:
                records[record["kind"]].append(record)
    return records


def parse_eval_lm(output: str) -> Dict[str, float]:
    """fairseq-eval-lm's summary lines -> ``{"loss": base-2 loss, "ppl": perplexity}``, plus
    ``"tokens"`` and ``"tokens_per_s"`` from its "Evaluated N tokens in ... (R tokens/s)" line."""
    matches = list(_EVAL_LM.finditer(output))
    if not matches:
        raise ValueError("no 'Loss (base 2): ..., Perplexity: ...' line in fairseq-eval-lm's output")
    last = matches[-1]
    result = {"loss": float(last.group("loss")), "ppl": float(last.group("ppl"))}
    speeds = list(_EVAL_SPEED.finditer(output))
    if speeds:
        result["tokens"] = int(speeds[-1].group("tokens").replace(",", ""))
        result["tokens_per_s"] = float(speeds[-1].group("rate"))
    return result
