"""Run fairseq's real console scripts (of the interpreter running the tests) on small corpora."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_DIR = os.path.join(ROOT, "truncated_bptt")
BIN = os.path.dirname(sys.executable)


def cli_env(**extra):
    """Environment for a CLI subprocess: single-threaded, deterministic, quiet, repo plugin first."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONHASHSEED="0",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(tool, *args, cwd=None, env=None, check=True, timeout=600):
    """Run ``tool`` (e.g. "fairseq-train") with ``args``.

    With ``check`` (default) returns the combined stdout+stderr and fails the test, showing the
    command and the end of its output, on a non-zero exit; without, returns the CompletedProcess.
    """
    exe = os.path.join(BIN, tool)
    cmd = [exe] + [str(a) for a in args]
    proc = subprocess.run(
        cmd, cwd=cwd, env=env or cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)}\nexited {proc.returncode}; last output:\n{proc.stdout[-6000:]}"
        )
    return proc.stdout if check else proc


def write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


def preprocess(text_dir, dest_dir, splits=("train", "valid", "test"), extra=()):
    """fairseq-preprocess --only-source over ``text_dir/{split}.txt`` into ``dest_dir``."""
    args = ["--only-source", "--destdir", dest_dir, "--workers", "1"]
    names = {"train": "--trainpref", "valid": "--validpref", "test": "--testpref"}
    for split in splits:
        args += [names[split], os.path.join(text_dir, f"{split}.txt")]
    return run("fairseq-preprocess", *args, *extra)
