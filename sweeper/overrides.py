"""The command line's overrides, checked before Hydra composes them: `check_overrides`.

Hydra reports a misspelt key, a value of the wrong type or an unknown group option over five
lines and exits with 1, or, for some mistakes, with a traceback or not at all; each is one line
here, naming the override and what is allowed, and exit status 2 (`ConfigError`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sweeper.config import Config
from sweeper.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def check_overrides(overrides: list[str], config_dirs: list[Path] = (),
                    multirun: bool | None = None) -> None:
    """Refuse a malformed override or an unknown option of a config group with a one-line error;
    also, with `multirun` given, a sweep of values without --multirun (multirun=False), and an
    Optuna search range where no sweep preset chooses the Optuna sweeper.

    Hydra reports both itself, over many lines; this runs first. Groups are the folders of conf/
    (and of `config_dirs` and file:// entries of hydra.searchpath, where presets such as a sweep's
    experiment/best.yaml live).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.append(parser.parse_overrides([text])[0])
        except HydraException as e:
            lines = str(e).splitlines()
            reason = lines[1] if len(lines) > 1 else lines[0] if lines else "syntax error"
            raise ConfigError(f"cannot parse the override {text!r}: {reason} (grammar: https://"
                              f"hydra.cc/docs/advanced/override_grammar/basic/)") from None
    _warn_repeated(parsed)
    dirs = [CONF_DIR, *map(Path, config_dirs)]
    for override in parsed:
        if override.key_or_group == "hydra.searchpath" and isinstance(override.value(), list):
            for entry in override.value():
                if not str(entry).startswith("file://"):
                    return  # a package on the search path: leave the options to Hydra
                dirs.append(Path(str(entry)[len("file://"):]))
    schema = None  # the typed config, built for the first plain key=value override
    samplers = [o.value() for o in parsed if o.key_or_group == "hydra/sweeper/sampler"
                and not o.is_delete() and not o.is_sweep_override() and o.value() in _SAMPLERS]
    # our sweeper comes from a sweep preset, or maybe from an experiment or a user's conf
    sweeper_chosen = len(dirs) > 1 or any(o.key_or_group in ("sweep", "hydra/sweeper", "experiment")
                                          for o in parsed)
    for override in parsed:
        group = override.key_or_group
        if group in ("sweep", "launcher", "hydra/sweeper", "hydra/launcher") and \
                override.is_sweep_override():  # Hydra: a traceback, or an unrelated key error
            raise ConfigError(f"{override.input_line} is invalid: a command runs one {group} "
                              f"preset, which sets how its jobs run; run one command per preset")
        if multirun is not None and override.is_sweep_override():
            _check_sweep_value(override, multirun, sweeper_chosen)
        folders = [d / group for d in dirs if (d / group).is_dir()]
        if group == "hydra/sweeper/sampler" and not override.is_delete():
            _check_option(override, group, _SAMPLERS)
        if group.startswith(_SWEEPER + "sampler.") and not override.is_delete():
            _check_sampler_key(override, samplers[-1:] or _SAMPLERS)
        elif group.startswith(_SWEEPER) and not override.is_delete():
            _check_sweeper_key(override, sweeper_chosen)
        if group.startswith("hydra") or (override.is_delete() and folders):
            continue
        if not folders:
            if schema is None:
                from omegaconf import OmegaConf

                schema = OmegaConf.structured(Config)
            if override.is_delete():
                _check_deletable(override, schema)
            else:
                _check_key(override, schema)
            continue
        _check_option(override, group, sorted({p.stem for f in folders for p in f.glob("*.yaml")}))


def _warn_repeated(parsed: list) -> None:
    """A swept key given again: Hydra takes the last without a word (`-m trainer.epochs=1,2
    trainer.epochs=3` runs one job), easy to miss where a setting is appended to a saved command.
    (A plain value given again, by a sweep too, is an override like any other: the last counts.)"""
    from sweeper.stores import redact

    last: dict[str, Any] = {}
    for override in parsed:
        key = override.get_key_element().lstrip("+~")
        if key in last and last[key].is_sweep_override():  # a sweep replaced: a grid collapses
            logging.getLogger(__name__).warning(
                "warning: %s is given twice (%s, then %s): the last one counts", key,
                redact(last[key].input_line), redact(override.input_line))
        last[key] = override


# The samplers of the official Optuna sweeper (group hydra/sweeper/sampler) that Optuna 3+ has.
_SAMPLERS = ["cmaes", "gp", "grid", "nsgaii", "nsgaiii", "qmc", "random", "tpe"]
_SWEEPER = "hydra.sweeper."


def _check_sweep_value(override: Any, multirun: bool, sweeper_chosen: bool) -> None:
    """A sweep of values needs --multirun, and a search range (interval) the Optuna sweeper,
    which a sweep preset chooses (Hydra says either over several lines, or as a traceback)."""
    line = override.input_line
    if override.is_interval_sweep() and not sweeper_chosen:
        presets = ", ".join(sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
        raise ConfigError(f"{line} is a search range of the Optuna sweeper, which a sweep preset "
                          f"chooses: add sweep=<preset> ({presets}) and --multirun; without one, "
                          f"--multirun sweeps lists of values ({override.key_or_group}=a,b)")
    if not multirun:
        raise ConfigError(f"{line} sweeps values, which needs --multirun (-m); for a list, write "
                          f"{override.key_or_group}=[...]; for a string with commas, quote it")


def _check_deletable(override: Any, schema: Any) -> None:
    """`~key` of a field of the typed config: a run cannot do without it (Hydra says so over five
    lines). Keys the schema does not have (`+note=...` ones) are left to Hydra."""
    from omegaconf import OmegaConf

    key = override.key_or_group
    if OmegaConf.select(schema, key, default=_ABSENT) is not _ABSENT:
        raise ConfigError(f"~{key} is invalid: {key} is a field of the typed config and cannot be "
                          f"deleted; set it instead ({key}=<value>)")


def _check_option(override: Any, group: str, allowed: list[str]) -> None:
    """A group option (each, in a sweep over options) must be one of `allowed`."""
    from hydra.errors import HydraException

    try:
        values = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                  else [override.value()])
    except HydraException:
        return  # a range or interval sweep of a group: Hydra will say what is wrong
    for value in values:
        if value is None or (isinstance(value, str) and value not in allowed):
            raise ConfigError(f"{group}={value if value is not None else 'null'} is invalid: "
                              f"allowed values are {', '.join(allowed)}")


def _check_sweeper_key(override: Any, chosen: bool) -> None:
    """`hydra.sweeper.<field>=value` of our sweeper must fit the field's type (Hydra says a wrong
    one over four lines), and needs our sweeper chosen (a sweep= preset), where Hydra would advise
    a `+`. A misspelt field gets a did-you-mean; other fields are left to Hydra (another sweeper's,
    such as the basic sweeper's params and max_batch_size)."""
    import difflib

    from omegaconf import OmegaConf

    from hydra_plugins.optuna_pruning_sweeper.config import OptunaPruningSweeperConf

    schema = OmegaConf.structured(OptunaPruningSweeperConf)
    key = override.key_or_group[len(_SWEEPER):]
    field = key.split(".")[0]
    if field in ("params", "max_batch_size") or override.is_add() or override.is_force_add():
        return  # Hydra's basic sweeper has these too; `+` keys are the user's own
    if field in schema:
        if not chosen:
            presets = ", ".join(sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml")))
            raise ConfigError(f"{override.key_or_group} is a setting of the Optuna sweeper, which a "
                              f"sweep preset chooses: add sweep=<preset> ({presets}) and --multirun")
        if OmegaConf.select(schema, key, default=_ABSENT) is not _ABSENT:
            _check_key(override, schema, prefix=_SWEEPER)
        return
    fields = [str(k) for k in schema if not str(k).startswith("_") and k != "defaults"]
    if guess := difflib.get_close_matches(field, fields, n=1):
        raise ConfigError(f"{override.key_or_group} is not a config key (did you mean "
                          f"{_SWEEPER}{guess[0]}?): the Optuna sweeper has {', '.join(fields)}")


def _check_sampler_key(override: Any, samplers: list[str]) -> None:
    """`hydra.sweeper.sampler.<field>=value`: a field of the sampler chosen on the command line, or,
    where the sampler comes from a preset (not known before composing), of any sampler."""
    import difflib

    import hydra_plugins.hydra_optuna_sweeper.config  # noqa: F401  (stores the samplers' configs)
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    key = override.key_or_group[len(_SWEEPER + "sampler."):]
    field = key.split(".")[0]
    schemas = [OmegaConf.structured(ConfigStore.instance().load(
        f"hydra/sweeper/sampler/{name}.yaml").node) for name in samplers]
    for schema in schemas:
        if field in schema:
            _check_key(override, schema, prefix=_SWEEPER + "sampler.")
            return
    if override.is_add() or override.is_force_add():
        return  # `+hydra.sweeper.sampler.x=...`: Hydra says whether the sampler takes it
    fields = sorted({str(k) for schema in schemas for k in schema if not str(k).startswith("_")})
    guess = difflib.get_close_matches(field, fields, n=1)
    hint = f" (did you mean {_SWEEPER}sampler.{guess[0]}?)" if guess else ""
    if len(samplers) > 1:
        raise ConfigError(f"{override.key_or_group} is not a key of any Optuna sampler{hint}")
    raise ConfigError(f"{override.key_or_group} is not a config key{hint}: the {samplers[0]} "
                      f"sampler has {', '.join(fields)}")


_TYPE_NAMES = {int: "an int", float: "a float", bool: "true or false", str: "a string"}
_PLURALS = {int: "ints", float: "floats", bool: "booleans", str: "strings"}


def _expected(parent: Any, name: str) -> str:
    """What field `name` of schema node `parent` holds, in words: 'an int', 'a list of ints'..."""
    from omegaconf import OmegaConf

    if OmegaConf.is_list(parent):  # an item of a list
        return _TYPE_NAMES.get(parent._metadata.element_type, "a value of another type")
    meta = parent._get_node(name)._metadata
    element = getattr(meta, "element_type", None)
    if element is not None and getattr(meta.ref_type, "__origin__", None) in (list, tuple):
        words = f"a list of {_PLURALS.get(element, 'values')}"
    else:
        words = _TYPE_NAMES.get(meta.ref_type, "a value of another type")
    return words + (" or null" if meta.optional else "")


def _check_key(override: Any, schema: Any, prefix: str = "") -> None:
    """A plain `key=value` override: the key must exist in the schema and the value fit its type
    (Hydra says both over five lines and exits with 1; this is one line and exit status 2)."""
    import difflib

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    key = override.key_or_group[len(prefix):]  # the schema's own key: `prefix` is above its root
    if override.package is not None:
        return
    added = override.is_add() or override.is_force_add()
    try:
        absent = OmegaConf.select(schema, key, default=_ABSENT) is _ABSENT
    except OmegaConfBaseException:  # a list indexed by a name: model.blocks.x
        absent = True
    if added and not absent:
        if override.is_force_add() or OmegaConf.select(schema, key) is None:
            return  # ++key sets or adds; +key may fill a null (if a group set it, Hydra says so)
        if not _merged(override):  # Hydra merges a list or a dict into the key; a value it refuses
            key, value = prefix + key, override.input_line.split("=", 1)[1]  # as typed: a sweep too
            raise ConfigError(f"+{key}={value} adds a key, but {key} exists: set it with "
                              f"{key}={value} (++{key}={value} sets or adds)")
    if absent:
        parent_key, _, name = key.rpartition(".")
        while parent_key and not OmegaConf.is_config(OmegaConf.select(schema, parent_key)):
            parent_key, _, name = parent_key.rpartition(".")
        if added and not parent_key:
            return  # `+note=baseline`: a new top-level key, recorded with the run's params
        parent = OmegaConf.select(schema, parent_key) if parent_key else schema
        if OmegaConf.is_list(parent):
            raise ConfigError(f"{key} is not a config key: {parent_key} has {len(parent)} items by "
                              f"default, {parent_key}.0 to {parent_key}.{len(parent) - 1}; set the "
                              f"whole list to change its length, e.g. {parent_key}=[...]")
        keys = [str(k) for k in parent.keys()]
        guess = difflib.get_close_matches(name, keys, n=1)
        hint = f" (did you mean {'.'.join(filter(None, [parent_key, guess[0]]))}?)" if guess else ""
        where = parent_key or "the config"
        raise ConfigError(f"{key} is not a config key{hint}: {where} has {', '.join(keys)}")
    sweep = override.is_sweep_override()
    if (values := _values(override)) is None:
        return  # an interval, a tagged or a glob sweep: the sweeper checks its bounds
    for value in values:
        if isinstance(value, str) and "${" in value:
            continue  # an interpolation: resolved when the config is composed
        try:
            OmegaConf.update(schema.copy(), key, value, merge=False)
        except OmegaConfBaseException:
            parent_key, _, name = key.rpartition(".")
            parent = OmegaConf.select(schema, parent_key) if parent_key else schema
            shown = "null" if value is None else value if sweep else \
                override.get_value_element_as_str()
            raise ConfigError(f"{prefix}{key}={shown} is invalid: "
                              f"{_expected(parent, int(name) if OmegaConf.is_list(parent) else name)}"
                              ) from None


_ABSENT = object()


def _values(override: Any) -> list | None:
    """An override's value, or each value of a sweep of a list; None for an interval, a tagged or
    a glob sweep, whose values are not known before the sweep runs."""
    from hydra.errors import HydraException

    try:
        return list(override.sweep_iterator()) if override.is_sweep_override() else \
            [override.value()]
    except (HydraException, TypeError, ValueError):
        return None


def _merged(override: Any) -> bool:
    """Whether every value of a `+key=...` override is a list or a dict, which Hydra merges into
    a key that exists (a scalar it refuses: "Could not append to config")."""
    values = _values(override)
    return values is not None and all(isinstance(v, (list, dict)) for v in values)
