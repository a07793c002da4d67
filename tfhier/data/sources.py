"""Data sources declare themselves: name, what they read, their options and how to load.

Each source module defines ``SOURCE = DataSource(...)``; :data:`tfhier.data.REGISTRY`
names the module of every source (a source module is imported only when it is
used, so that importing :mod:`tfhier.data` stays light).  From the declaration
come

* the ``train.py`` flags: one flag per option name, shared by every source that
  declares that name with the same kind, its ``--help`` saying which sources use it;
* refusal of a source's option given to another source (by name, as for models'
  hyperparameters: :func:`options_from_flags`);
* the data options a run records in ``flags.cfg`` and that :mod:`tfhier.runs`
  reloads the data with.

Adding a source: write its module (a loader ``load(data_dir, seed, **options) ->
SequenceData`` and its ``SOURCE``) and add one line to ``REGISTRY``.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Optional, Union

from tfhier.data.base import DataError

OPTION_KINDS = ("int", "float", "str", "bool")


@dataclasses.dataclass(frozen=True)
class DataOption:
    """One option of a data source: its flag / keyword name, kind, default and meaning."""

    name: str
    kind: str
    default: Any
    help: str
    choices: Optional[tuple] = None

    def __post_init__(self):
        if self.kind not in OPTION_KINDS:
            raise ValueError(f"DataOption {self.name}: kind must be one of {OPTION_KINDS}, got {self.kind!r}")

    def parse(self, value, source: str):
        """``value`` (a flag string or a Python value) as this kind; DataError naming ``source``."""
        try:
            if self.kind == "int":
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                out = int(value)
            elif self.kind == "float":
                if isinstance(value, bool):
                    raise ValueError
                out = float(value)
            elif self.kind == "bool":
                if isinstance(value, str):
                    if value.strip().lower() not in ("true", "false", "1", "0"):
                        raise ValueError
                    out = value.strip().lower() in ("true", "1")
                elif isinstance(value, (bool, int)):
                    out = bool(value)
                else:
                    raise ValueError
            else:
                if not isinstance(value, str):
                    raise ValueError
                out = value
        except (TypeError, ValueError):
            raise DataError(f"{source} must be {'an' if self.kind == 'int' else 'a'} {self.kind}, "
                            f"got {value!r}") from None
        if self.choices is not None and out not in self.choices:
            raise DataError(f"{source} must be one of {list(self.choices)}, got {out!r}")
        return out


@dataclasses.dataclass(frozen=True)
class DataSource:
    """A data source's declaration.

    Attributes:
      name: the ``--dataset`` value.
      description: one line for ``--help``.
      load: ``load(data_dir, seed, **options) -> SequenceData``.
      options: the source's own options (flags), :class:`DataOption` entries.
      data_dir: None when the source reads no files; else what ``--data_dir`` must be (for messages).
      shape: ``(kind, feature_dim)`` known before reading data, a function ``options -> (kind, feature_dim)``,
        or ``"data"``: the files decide (a user's own data), known once they are loaded.
    """

    name: str
    description: str
    load: Callable
    options: tuple = ()
    data_dir: Optional[str] = None
    shape: Union[tuple, Callable] = ("real", None)

    def option(self, name) -> DataOption:
        return {o.name: o for o in self.options}[name]

    def resolve(self, values: dict) -> dict:
        """Every option of this source: ``values`` parsed over the defaults; an unknown name is a DataError."""
        declared = {o.name: o for o in self.options}
        unknown = sorted(set(values) - set(declared))
        if unknown:
            raise DataError(f"--dataset={self.name} has no option {', '.join(unknown)} "
                            f"(it has: {', '.join(sorted(declared)) or 'none'})")
        return {name: o.parse(values[name], f"--{name}") if name in values else o.default
                for name, o in declared.items()}


def get_source(registry: dict, name) -> DataSource:
    """The declaration of source ``name`` (imports its module)."""
    if name not in registry:
        raise DataError(f"--dataset must be one of {list(registry)}, got {name!r}")
    return importlib.import_module(registry[name]).SOURCE


def option_table(sources) -> dict:
    """``{option name: (DataOption, [source names])}`` over ``sources``; a name declared with two kinds is a
    programming error."""
    table = {}
    for source in sources:
        for o in source.options:
            if o.name in table:
                first, users = table[o.name]
                if first.kind != o.kind:
                    raise TypeError(f"data option {o.name!r} is declared with kind {first.kind} and {o.kind}")
                if first.choices != o.choices:
                    merged = tuple(dict.fromkeys((first.choices or ()) + (o.choices or ())))
                    table[o.name] = (dataclasses.replace(first, choices=merged or None), users)
                users.append(source.name)
            else:
                table[o.name] = (o, [source.name])
    return table


def define_flags(sources, flag_values, module_name: str, reserved=()):
    """One absl flag per option name (default None: "the source's own default", so a run's flags.cfg records
    only the options given); its help starts with ``[source, ...]`` and says each one's default. Returns the
    option table."""
    from absl import flags

    table = option_table(sources)
    for name, (o, users) in sorted(table.items()):
        if name in reserved:
            raise TypeError(f"data option {name!r} clashes with a train.py flag")
        defaults = {src.name: src.option(name).default for src in sources if name in {x.name for x in src.options}}
        shown = "; ".join(f"{u}: {d}" for u, d in defaults.items()) if len(set(map(str, defaults.values()))) > 1 \
            else str(o.default)
        text = f"[{', '.join(users)}] {o.help} (default {shown})"
        kwargs = dict(flag_values=flag_values, module_name=module_name)
        if o.kind == "bool":
            flags.DEFINE_boolean(name, None, text, **kwargs)
        elif o.kind == "int":
            flags.DEFINE_integer(name, None, text, **kwargs)
        elif o.kind == "float":
            flags.DEFINE_float(name, None, text, **kwargs)
        elif o.choices:
            flags.DEFINE_enum(name, None, list(o.choices), text, **kwargs)
        else:
            flags.DEFINE_string(name, None, text, **kwargs)
    return table


def options_from_flags(source: DataSource, table: dict, flag_values) -> dict:
    """The options of ``source`` from the flags; a present flag of another source is a DataError naming it."""
    own = {o.name for o in source.options}
    values = {}
    for name, (_, users) in table.items():
        flag = flag_values[name]
        if flag.value is None:
            continue
        if name in own:
            values[name] = flag.value
        elif flag.present:
            raise DataError(f"--{name} is an option of --dataset={'/'.join(users)}; --dataset={source.name} does "
                            f"not use it (remove it)")
    return source.resolve(values)


__all__ = ["DataOption", "DataSource", "define_flags", "get_source", "option_table", "options_from_flags"]
