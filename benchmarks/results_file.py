"""Where the single-purpose benchmark scripts write what they printed: one timestamped file each;
and the table of their alternating rounds (variant by variant, best, median and every round)."""
import datetime
import os
from typing import Dict, List


def write_results(text: str, out_dir: str, prefix: str, suffix: str) -> str:
    """Write ``text`` to ``<out_dir>/<prefix>-<UTC time><suffix>`` (e.g. ``.md``), say where, and
    return the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{prefix}-{datetime.datetime.utcnow():%Y%m%d-%H%M%S}{suffix}")
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")
    print(f"written to {path}")
    return path


def rounds_table(times: Dict[str, List[float]], unit: str, digits: int) -> List[str]:
    """Lines of a table of timed rounds: a header, then per variant its best and median
    milliseconds per ``unit`` (``digits`` decimals) and every round's."""
    best, median = f"best ms/{unit}", f"median ms/{unit}"
    lines = [f"variant    {best}  {median}  rounds (ms/{unit})"]
    for variant, values in times.items():
        lines.append(f"{variant:9s}  {min(values):{len(best)}.{digits}f}  "
                     f"{sorted(values)[len(values) // 2]:{len(median)}.{digits}f}  "
                     + ", ".join(f"{v:.{digits}f}" for v in values))
    return lines
