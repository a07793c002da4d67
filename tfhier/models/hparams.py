"""Model hyperparameters: each model declares its own, and everything else is derived from the declaration.

A model class lists its hyperparameters as :class:`HParam` entries in
``HPARAMS``.  From that one list come

* the constructor's keyword arguments and their defaults
  (:meth:`tfhier.models.base.SequenceModel.__init__` fills and checks them);
* ``get_config()`` (every hyperparameter, defaults included, so a run's
  ``config.json`` rebuilds the same model even after a default changes);
* the ``train.py`` flags (:func:`define_flags`): one flag per hyperparameter
  name, shared by every model that declares that name with the same kind,
  its ``--help`` saying which models use it and each one's default;
* the mapping from flags to a configuration (:func:`config_from_flags`): a
  flag given explicitly (on the command line or in a flagfile) to a model that
  does not declare it is an error, not silently ignored;
* how a stored configuration written before a hyperparameter existed is read
  (:func:`complete_stored`: the value it was trained with, ``stored_default``).

Kinds: ``int``, ``float``, ``str`` (``choices`` optional), ``bool``, ``ints``
(a comma-separated list of integers, e.g. one entry per layer), ``floats`` (a
comma-separated list of numbers, e.g. one per data dimension) and
``int_lists`` (lists of integers separated by ``;``, e.g. per-layer dilations
``1,2;1,2,4``).  Values given as JSON (``--model_config``) use JSON lists.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

KINDS = ("int", "float", "str", "bool", "ints", "floats", "int_lists")


class HParamError(ValueError):
    """A hyperparameter value or flag is unusable; the message names the flag and what was expected."""


@dataclasses.dataclass(frozen=True)
class HParam:
    """One hyperparameter: its constructor / config / flag name, kind, default and meaning."""

    name: str
    kind: str
    default: Any
    help: str
    choices: Optional[tuple] = None
    #: the value a stored configuration written before this hyperparameter existed was trained with (None: the
    #: default); :func:`complete_stored` fills it in, so old runs rebuild as they were trained
    stored_default: Any = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"HParam {self.name}: kind must be one of {KINDS}, got {self.kind!r}")

    def parse(self, value, source: str):
        """``value`` (a flag's value, a JSON value or a Python value) as this kind; HParamError naming ``source``."""
        what = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
                "ints": "a comma-separated list of integers", "floats": "a comma-separated list of numbers",
                "int_lists":
                "lists of integers, layers separated by ';' (e.g. 1,2;1,2,4)"}[self.kind]
        try:
            out = _PARSERS[self.kind](value)
        except (TypeError, ValueError, RecursionError):
            from tfhier.checks import shown

            raise HParamError(f"{source} must be {what}, got {shown(value)}") from None
        if self.choices is not None and out not in self.choices:
            from tfhier.checks import shown

            raise HParamError(f"{source} must be one of {list(self.choices)}, got {shown(out)}")
        return out

    def format(self, value) -> str:
        """The flag text of ``value``."""
        if self.kind in ("ints", "floats"):
            return ",".join(str(v) for v in value)
        if self.kind == "int_lists":
            return ";".join(",".join(str(v) for v in vs) for vs in value)
        if self.kind == "bool":
            return "true" if value else "false"
        return str(value)


def _int(v):
    if isinstance(v, bool):
        raise ValueError
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError
        return int(v)
    return int(str(v).strip()) if isinstance(v, str) else int(v)


def _float(v):
    if isinstance(v, bool):
        raise ValueError
    out = float(v)
    if out != out or out in (float("inf"), float("-inf")):
        raise ValueError
    return out


def _bool(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "1", "yes"):
        return True
    if isinstance(v, str) and v.strip().lower() in ("false", "0", "no"):
        return False
    raise ValueError


def _ints(v):
    if isinstance(v, str):
        v = [p for p in v.split(",") if p.strip()]
    if not isinstance(v, (list, tuple)):
        raise ValueError
    return [_int(p) for p in v]


def _floats(v):
    if isinstance(v, str):
        v = [p for p in v.split(",") if p.strip()]
    if not isinstance(v, (list, tuple)):
        raise ValueError
    return [_float(p) for p in v]


def _int_lists(v):
    if isinstance(v, str):
        v = [layer.split(",") for layer in v.split(";")]
    if not isinstance(v, (list, tuple)):
        raise ValueError
    return [_ints(layer) for layer in v]


def _str(v):
    if not isinstance(v, str):
        raise ValueError
    return v


_PARSERS = {"int": _int, "float": _float, "str": _str, "bool": _bool, "ints": _ints, "floats": _floats,
            "int_lists": _int_lists}


def resolve(cls, values: dict, *, model_name: str) -> dict:
    """All of ``cls.HPARAMS`` with ``values`` parsed over the defaults; unknown names are an HParamError."""
    declared = {h.name: h for h in cls.HPARAMS}
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise HParamError(f"{model_name} has no hyperparameter {', '.join(unknown)} "
                          f"(it has: {', '.join(sorted(declared))})")
    out = {}
    for name, h in declared.items():
        out[name] = h.parse(values[name], f"{model_name}: {name}") if name in values else copy_value(h.default)
    return out


def complete_stored(cls, values: dict) -> dict:
    """A stored configuration (a run's ``config.json`` ``model_config``: ``get_config()`` when it was written)
    with every hyperparameter it lacks set to the value it was trained with (``stored_default``); hyperparameters
    that changed nothing have no ``stored_default`` and take the model's default when it is built."""
    out = dict(values)
    for h in cls.HPARAMS:
        if h.name not in out and h.stored_default is not None:
            out[h.name] = copy_value(h.stored_default)
    return out


def copy_value(value):
    """A deep copy of a hyperparameter's value (lists, tuples and dicts through JSON, as config.json holds them)."""
    return json.loads(json.dumps(value)) if isinstance(value, (list, tuple, dict)) else value


# ----------------------------------------------------------------------------------------------- flags

def flag_table(models: dict) -> dict:
    """``{flag name: (HParam, {model name: default})}`` over every registered model; a name that two models
    declare with different kinds or choices is a programming error."""
    table = {}
    for model_name, cls in models.items():
        for h in cls.HPARAMS:
            if h.name in table:
                first, defaults = table[h.name]
                if first.kind != h.kind:
                    raise TypeError(f"hyperparameter {h.name!r} is declared with kind {first.kind} and {h.kind}")
                if first.choices != h.choices:
                    merged = tuple(dict.fromkeys((first.choices or ()) + (h.choices or ())))
                    table[h.name] = (dataclasses.replace(first, choices=merged or None), defaults)
                defaults[model_name] = h.default
            else:
                table[h.name] = (h, {model_name: h.default})
    return table


def define_flags(models: dict, flag_values, module_name: str, reserved=()):
    """Defines one absl flag per hyperparameter name (default None: "the model's own default").

    ``--help`` lists the models that use each flag and their defaults.  Names in
    ``reserved`` are flags the caller defines itself (an error if a model uses one).
    """
    from absl import flags

    for name, (h, defaults) in sorted(flag_table(models).items()):
        if name in reserved:
            raise TypeError(f"model hyperparameter {name!r} clashes with a train.py flag")
        users = ", ".join(sorted(defaults))
        shown = "; ".join(f"{m}: {h.format(d) or '(empty)'}" for m, d in sorted(defaults.items()))
        text = f"[{users}] {h.help} (default {shown})"
        kwargs = dict(flag_values=flag_values, module_name=module_name)
        if h.kind == "bool":
            flags.DEFINE_boolean(name, None, text, **kwargs)
        elif h.kind == "str" and h.choices:
            flags.DEFINE_enum(name, None, list(h.choices), text, **kwargs)
        else:
            flags.DEFINE_string(name, None, text, **kwargs)


def read_model_config_flag(text: Optional[str]) -> dict:
    """``--model_config``: a JSON object, or the path of a file holding one (``{}`` when unset)."""
    if not text:
        return {}
    source = "--model_config"
    if not text.lstrip().startswith("{"):
        if not os.path.isfile(text):
            raise HParamError(f"--model_config={text!r} is neither a JSON object nor a file")
        source = f"--model_config={text}"
        try:
            if os.path.getsize(text) > 2 ** 20:
                raise HParamError(f"{source}: {os.path.getsize(text):,} bytes is no JSON object of hyperparameters "
                                  f"(at most 1 MB)")
            with open(text, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise HParamError(f"{source}: cannot read it ({e.strerror or e})") from None
        except UnicodeDecodeError:
            raise HParamError(f"{source} is not a text file (binary bytes); expected a JSON object of "
                              f"hyperparameters") from None
    try:
        value = json.loads(text)
    except ValueError as e:  # JSONDecodeError, or a number of more than 4,300 digits
        from tfhier.checks import shown

        raise HParamError(f"{source} is not valid JSON: {shown(str(e), 200)}") from None
    except RecursionError:
        raise HParamError(f"{source}: JSON nested too deeply for a hyperparameter object") from None
    if not isinstance(value, dict):
        raise HParamError(f"{source} must be a JSON object of hyperparameters, got {type(value).__name__}")
    return value


def config_from_flags(models: dict, model_name: str, flag_values, model_config: Optional[str] = None) -> dict:
    """The hyperparameters of ``model_name`` given explicitly by flags (and ``--model_config``), parsed.

    Only flags that are present (command line or flagfile) are taken; the
    model's defaults fill the rest when it is built.  A present flag that the
    model does not declare is an HParamError naming the flag and its users.
    """
    cls = models[model_name]
    table = flag_table(models)
    own = {h.name: h for h in cls.HPARAMS}
    values = {}
    for name, (h, defaults) in table.items():
        flag = flag_values[name]
        if not flag.present or flag.value is None:
            continue
        if name not in own:
            raise HParamError(f"--{name} is a flag of {', '.join(sorted(defaults))}; --model={model_name} does not "
                              f"use it (remove it, or pick one of those models)")
        values[name] = own[name].parse(flag.value, f"--{name}")
    for name, value in read_model_config_flag(model_config).items():
        if name not in own:
            raise HParamError(f"--model_config: {model_name} has no hyperparameter {name!r} "
                              f"(it has: {', '.join(sorted(own))})")
        values[name] = own[name].parse(value, f"--model_config {name}")
    return values


__all__ = ["HParam", "HParamError", "KINDS", "complete_stored", "config_from_flags", "copy_value", "define_flags",
           "flag_table", "read_model_config_flag", "resolve"]
