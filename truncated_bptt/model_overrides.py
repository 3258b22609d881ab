"""Check ``--model-overrides`` before fairseq applies it to a checkpoint's configuration.

fairseq-eval-lm / -generate / -interactive ``eval`` the option and set every key that names an
option somewhere in the checkpoint's configuration, silently skipping the others, without any type
check. So a misspelt key (``memlen``) changes nothing, a value of the wrong type (``'640'``) fails
deep inside the model, and a task option (``tokens_per_sample``) changes nothing because these tools
build the task from their own command line. Each of these is refused here with one line.
"""
import ast
import dataclasses
import difflib
import typing
from typing import Any, Dict, Optional

EXAMPLE = "--model-overrides \"{'mem_len': 640, 'clamp_len': 400, 'same_length': True}\""


def parse(text: str) -> Optional[Dict[str, Any]]:
    """The overrides as fairseq will see them, or None when ``text`` is valid Python but not a
    literal (fairseq ``eval``s it; it is then left unchecked)."""
    try:
        value = ast.literal_eval(text)
    except SyntaxError as err:
        raise ValueError(
            f"--model-overrides {text!r} is not a Python dict ({err.msg}): write it as {EXAMPLE}"
        ) from None
    except ValueError:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(
            f"--model-overrides {text!r} is not a dict of option names to values: write it as "
            f"{EXAMPLE}"
        )
    return value


def known_option_names() -> set:
    """Every option name of fairseq's configuration groups and of every registered model, task,
    criterion, optimizer, scheduler, tokenizer, ...: the names an override can possibly reach."""
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.models import MODEL_DATACLASS_REGISTRY
    from fairseq.registry import REGISTRIES
    from fairseq.tasks import TASK_DATACLASS_REGISTRY

    classes = [f.type for f in dataclasses.fields(FairseqConfig) if dataclasses.is_dataclass(f.type)]
    classes += list(MODEL_DATACLASS_REGISTRY.values()) + list(TASK_DATACLASS_REGISTRY.values())
    for registry in REGISTRIES.values():
        classes += list(registry["dataclass_registry"].values())
    return {f.name for cls in classes for f in dataclasses.fields(cls)}


def own_options(config_class) -> Dict[str, dataclasses.Field]:
    """The options a config dataclass defines itself: not ``_name``, not ``II(...)`` copies of
    other groups' options."""
    return {f.name: f for f in dataclasses.fields(config_class)
            if not f.name.startswith("_") and not str(f.default).startswith("${")}


def check(text: str, model_config_class, task_config_class) -> None:
    """Raise ValueError for an override fairseq would ignore or that has the
    wrong type for the model (``model_config_class``, a dataclass)."""
    overrides = parse(text)
    if not overrides:
        return
    model_options = own_options(model_config_class)
    types = typing.get_type_hints(model_config_class)
    task_options = set(own_options(task_config_class)) - set(model_options)
    known = None
    for name, value in overrides.items():
        if name in task_options:
            flag = "the DATA argument" if name == "data" else f"--{name.replace('_', '-')}"
            raise ValueError(
                f"--model-overrides sets {name!r}, an option of the task, which fairseq builds from "
                f"the command line, not from the checkpoint: give {flag} instead"
            )
        if name in model_options:
            _check_type(name, value, types[name], model_options[name])
            continue
        known = known_option_names() if known is None else known
        if name not in known:
            close = difflib.get_close_matches(name, sorted(model_options), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"--model-overrides sets {name!r}, which is no option of the model or of fairseq, "
                f"so fairseq would ignore it: {hint}the model's options are "
                f"{', '.join(sorted(model_options))}"
            )


def _check_type(name: str, value, annotation, field: dataclasses.Field) -> None:
    if _fits(value, annotation):
        return
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    raise ValueError(
        f"--model-overrides gives {name!r} the {type(value).__name__} {value!r}, but {name} takes "
        f"{_type_name(annotation)}, e.g. --model-overrides \"{{'{name}': {default!r}}}\""
    )


def _fits(value, annotation) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        return any(_fits(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True  # other annotations (enums, Any): left to fairseq


def _type_name(annotation, plural=False) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in args)
    if annotation is type(None):
        return "None"
    if origin in (list, tuple):
        return f"a list of {_type_name(args[0], plural=True)}"
    names = {bool: "True or False", int: "an int", float: "a number", str: "a string"}
    plurals = {bool: "True or False values", int: "ints", float: "numbers", str: "strings"}
    return (plurals if plural else names).get(annotation, str(annotation))
