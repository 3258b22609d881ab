"""Where the single-purpose benchmark scripts write what they printed: one timestamped file each."""
import datetime
import os


def write_results(text: str, out_dir: str, prefix: str, suffix: str) -> str:
    """Write ``text`` to ``<out_dir>/<prefix>-<UTC time><suffix>`` (e.g. ``.md``), say where, and
    return the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{prefix}-{datetime.datetime.utcnow():%Y%m%d-%H%M%S}{suffix}")
    with open(path, "w") as f:
        f.write(text.rstrip("\n") + "\n")
    print(f"written to {path}")
    return path
