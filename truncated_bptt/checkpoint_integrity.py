"""Tell intact checkpoint files from incomplete or corrupt ones before fairseq reads them.

fairseq writes the first file of a save atomically (``.tmp`` then rename) but copies it to
``checkpoint_last.pt`` / ``checkpoint_best.pt`` with a plain copy, so a crash during the copy leaves
a truncated file, on which ``torch.load`` fails with a message about zip internals. This module
recognises such files and names the intact checkpoints beside them; the decisions (refuse, or
resume from the newest intact checkpoint) are taken in :mod:`truncated_bptt.setup_checks`.

A checkpoint written by ``torch.save`` is a zip archive whose central directory sits at the very
end of the file. Two levels of checking:

- **structure** (cheap, a few reads per tensor): the end-of-archive record and central directory
  are present and every member's local header and data lie inside the file. A truncated copy, or
  a file whose end was zero-filled by a crash, fails here.
- **data** (reads the whole file once, about as long as loading it): every member's CRC-32 matches.
  ``torch.load`` itself never checks these, so a flipped bit would otherwise load silently.

Files in torch's legacy (pre-1.6, pickle) format cannot be checked and count as intact.
"""
import os
import struct
import zipfile
from typing import List, NamedTuple, Optional

ZIP_MAGIC = b"PK\x03\x04"
LOCAL_HEADER_SIZE = 30  # fixed part of a zip local file header
MAX_LISTED = 4  # checkpoints named in a message before "and N more"


class Problem(NamedTuple):
    """What is wrong with a file: ``text`` completes "checkpoint PATH ..." ("is incomplete (...)");
    ``incomplete``: its end is missing (an interrupted write or copy), rather than damaged."""
    text: str
    incomplete: bool


def checkpoint_problem(path: str, verify_data: bool = True) -> Optional[Problem]:
    """What is wrong with the checkpoint file ``path``, or None when it is intact (or in torch's
    unverifiable legacy format). ``path`` must exist."""
    size = os.path.getsize(path)
    if size == 0:
        return Problem("is empty (0 bytes: its writing stopped at the start)", incomplete=True)
    with open(path, "rb") as f:
        head = f.read(len(ZIP_MAGIC))
    if head[:1] == b"\x80":  # a pickle: torch's legacy format, nothing to verify against
        return None
    if head != ZIP_MAGIC:
        return Problem(f"is not a PyTorch checkpoint ({size:,} bytes that start with neither a "
                       "zip nor a pickle header)", incomplete=False)
    try:
        with zipfile.ZipFile(path) as archive:
            problem = _member_problem(path, size, archive.infolist())
            if problem is None and verify_data:
                bad = archive.testzip()
                if bad is not None:
                    problem = Problem(f"is corrupt (the data of its record {bad!r} fails its "
                                      "CRC-32 check)", incomplete=False)
            return problem
    except zipfile.BadZipFile as err:
        if "not a zip file" in str(err):  # no end-of-archive record: the tail is missing
            return Problem(f"is incomplete ({size:,} bytes; the end of the file is missing, as "
                           "after an interrupted write or copy)", incomplete=True)
        return Problem(f"is corrupt (its zip directory cannot be read: {err})", incomplete=False)
    except (OSError, EOFError, struct.error, ValueError) as err:
        return Problem(f"is corrupt (reading it fails: {err})", incomplete=False)


def _member_problem(path: str, size: int, members) -> Optional[Problem]:
    """Check that each member's local header is where the central directory says, inside the file."""
    with open(path, "rb") as f:
        for info in members:
            f.seek(info.header_offset)
            header = f.read(LOCAL_HEADER_SIZE)
            if len(header) < LOCAL_HEADER_SIZE:
                return Problem(f"is incomplete ({size:,} bytes; its record {info.filename!r} "
                               "is cut off)", incomplete=True)
            if header[:4] != ZIP_MAGIC:
                return Problem(f"is corrupt (the header of its record {info.filename!r} is "
                               "damaged)", incomplete=False)
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            end = info.header_offset + LOCAL_HEADER_SIZE + name_len + extra_len + info.compress_size
            if end > size:
                return Problem(f"is incomplete ({size:,} bytes; its record {info.filename!r} "
                               f"ends at byte {end:,})", incomplete=True)
    return None


def checkpoint_names(directory: str, suffix: str = "") -> List[str]:
    """fairseq's checkpoint files (``checkpoint*{suffix}.pt``) in ``directory``, newest first."""
    try:
        names = [n for n in os.listdir(directory)
                 if n.startswith("checkpoint") and n.endswith(f"{suffix}.pt")]
    except OSError:
        return []
    paths = [os.path.join(directory, n) for n in names]
    paths = [p for p in paths if os.path.isfile(p)]
    return [os.path.basename(p) for p in sorted(paths, key=os.path.getmtime, reverse=True)]


def intact_checkpoints_beside(path: str, suffix: str = "") -> List[str]:
    """Paths of the structurally intact checkpoints in ``path``'s directory but ``path``, newest
    (by modification time) first."""
    directory = os.path.dirname(os.path.abspath(path))
    others = [os.path.join(directory, n) for n in checkpoint_names(directory, suffix)]
    others = [p for p in others if not os.path.samefile(p, path)] if os.path.exists(path) else others
    return [p for p in others if checkpoint_problem(p, verify_data=False) is None]


def describe_names(paths: List[str]) -> str:
    """``a.pt, b.pt, c.pt`` (base names), at most MAX_LISTED of them and how many more."""
    names = [os.path.basename(p) for p in paths[:MAX_LISTED]]
    more = len(paths) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "")


def refusal(path: str, problem: Problem, option: str, suffix: str = "") -> ValueError:
    """One line: the file, what is wrong, the intact checkpoints beside it and the option to use."""
    intact = intact_checkpoints_beside(path, suffix)
    if intact:
        beside = (f"intact checkpoints beside it, newest first: {describe_names(intact)}; "
                  f"pass one of them to {option}")
    else:
        beside = f"no intact checkpoint is beside it; pass another one to {option}"
    return ValueError(f"checkpoint {path} {problem.text}: {beside}")


def missing(path: str, option: str, consequence: str = "") -> FileNotFoundError:
    """One line: ``path`` is no file (``consequence``), the intact checkpoints in it (a directory)
    or beside it, and the option to give one of them to."""
    if os.path.isdir(path):
        directory, what = path, f"checkpoint {path} is a directory"
    else:
        directory, what = os.path.dirname(os.path.abspath(path)), f"checkpoint {path} does not exist"
    found = [p for p in (os.path.join(directory, n) for n in checkpoint_names(directory))
             if checkpoint_problem(p, verify_data=False) is None]
    listing = (f"intact checkpoints in {directory}: {describe_names(found)}" if found
               else f"no intact checkpoint is in {directory}")
    return FileNotFoundError(f"{what} ({listing}){consequence}: pass an existing checkpoint file "
                             f"to {option}")


def check_readable(path: str, option: str, verify_data: bool = True) -> None:
    """Raise a one-line FileNotFoundError or ValueError unless ``path`` (given with ``option``)
    exists and is intact."""
    if not os.path.isfile(path):
        raise missing(path, option)
    problem = checkpoint_problem(path, verify_data=verify_data)
    if problem is not None:
        raise refusal(path, problem, option)


def restore_path_to_use(save_dir: str, restore_file: str, suffix: str = "") -> Optional[str]:
    """The checkpoint fairseq-train should resume from instead of the one its options name, or
    None to keep fairseq's choice; raises ValueError when resuming is impossible.

    Mirrors ``fairseq.checkpoint_utils.load_checkpoint``: the default ``--restore-file
    checkpoint_last.pt`` means ``{save_dir}/checkpoint_last{suffix}.pt``, any other value is the
    path itself. A missing file means a fresh start to fairseq; that is refused for a file given
    explicitly, unless it names the default one (scripts that restart themselves). An incomplete default file (a crash during fairseq's copy to it) is replaced by the
    newest intact checkpoint beside it, the file that copy was made from. A damaged explicitly given
    file, or a default one that is damaged rather than incomplete, is refused: the user decides.
    Only the structure is checked (cheap, the same on every process).
    """
    default = restore_file == "checkpoint_last.pt"
    if default:
        path = os.path.join(save_dir, f"checkpoint_last{suffix}.pt")
    else:
        path = restore_file.replace(".pt", f"{suffix}.pt") if suffix else restore_file
    if not os.path.isfile(path):
        if default or _same_path(path, os.path.join(save_dir, f"checkpoint_last{suffix}.pt")):
            return None  # fairseq starts from scratch (or --continue-once / --finetune-from-model)
        raise missing(path, "--restore-file", ", so fairseq would silently train from scratch")
    problem = checkpoint_problem(path, verify_data=False)
    if problem is None:
        return None
    if not default or not problem.incomplete:
        raise refusal(path, problem, "--restore-file", suffix)
    intact = intact_checkpoints_beside(path, suffix)
    if not intact:
        raise ValueError(
            f"checkpoint {path} {problem.text} and no intact checkpoint is beside it: move it away "
            "to start training from scratch, or pass an intact checkpoint to --restore-file"
        )
    return intact[0]


def _same_path(a: str, b: str) -> bool:
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))
