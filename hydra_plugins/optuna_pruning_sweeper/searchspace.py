"""A sweep's search space and recipe: parsed, checked before any trial, kept with the study.

The space is Hydra override lines (`model.blocks.0=range(1,9)`), parsed by the official Optuna
plugin into Optuna distributions. Every value it can propose at its ends is checked against the
config first. A study keeps its recipe (the settings every trial shares) and the keys it searches,
so a later run of the same study with other settings is refused instead of mixing trials.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import DictConfig, OmegaConf

from sweeper.errors import ConfigError

log = logging.getLogger(__name__)

# Numbers in a trial's results.json that a sweep may optimize (sweeper.engine.Result); never
# test/acc, which a sweep that chose by it would no longer measure without bias.
OBJECTIVES = ("val/acc", "n_params", "train_time_s", "images_per_s", "startup_s")
# Settings that change how a trial runs or is recorded, not what it measures: a study's recipe
# leaves them out, so a resumed sweep may change them.
NOT_RECIPE = ("hydra", "tracking", "trial", "data.root", "data.download", "trainer.device",
               "trainer.compile", "trainer.channels_last", "trainer.eval_batch_size",
               "trainer.log_every", "trainer.save_model", "trainer.checkpoint", "trainer.resume")


_MISSING = object()


def parse(params: Any, arguments: list[str]) -> tuple[dict, list[str], list[str]]:
    """The sweep's search space from hydra.sweeper.params and the command line (later lines win):
    (searched key -> distribution, the fixed override lines, every line as given)."""
    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
        last = {o.get_key_element(): line for o, line in zip(parsed, lines)}  # later lines win
        lines = list(last.values())
        space, fixed, fixed_overrides = create_params_from_overrides(lines)
    except Exception as e:  # the override grammar's own errors, or Optuna's (low > high)
        where = next((line for line in lines if not _parses(line)), "hydra.sweeper.params")
        raise ConfigError(f"{where} cannot be parsed: {e}") from None
    for name in fixed:
        space.pop(name, None)
    if not space:
        raise ConfigError("hydra.sweeper.params is empty: give at least one key a range, "
                          "e.g. optimizer.lr=tag(log,interval(0.01,1))")
    return space, [f"{k}={v}" for k, v in fixed.items()] + fixed_overrides, lines


def check_space(space: dict, shared: DictConfig, lines: list[str], grid: bool) -> None:
    """Every searched key exists, and every value the space can propose at its ends (each
    choice, the low and high ends of a range or interval) passes the config's checks, so a
    sweep does not fill its study with trials that fail at once."""
    from sweeper.config import validate

    validate(shared)  # the settings every trial shares first: their own message
    given = {line.split("=", 1)[0]: line for line in lines}
    for name, dist in space.items():
        key, shown = name.lstrip("+"), given.get(name, name)
        if not name.startswith("+") and OmegaConf.select(shared, key, default=_MISSING) is _MISSING:
            raise ConfigError(f"hydra.sweeper.params key '{name}' does not exist in the config")
        if grid and not isinstance(dist, optuna.distributions.CategoricalDistribution) \
                and not (isinstance(dist, optuna.distributions.IntDistribution) or dist.step):
            raise ConfigError(f"{shown} is continuous: the grid sampler needs "
                              f"choice(...) or range(...) values")
        if name.startswith("+"):
            continue
        for value in _ends(dist):
            cfg = shared.copy()
            try:
                OmegaConf.update(cfg, key, value, merge=False)
                validate(cfg)
            except ConfigError as e:
                raise ConfigError(f"{shown} can propose {value}: {e}") from None
            except Exception as e:  # the schema refuses the value's type
                raise ConfigError(f"{shown} can propose {value}, which "
                                  f"{key} cannot hold ({str(e).splitlines()[0]})") from None


def refuse_overlaps(space: dict, fixed_lines: list[str], groups: DictConfig) -> None:
    """A fixed value that holds a searched key (model.blocks=[3,3,3,3] with model.blocks.0
    searched), or lies inside one, would be applied over each trial's value: every trial would
    train what the fixed value says while the study records what Optuna proposed."""
    for line in fixed_lines:
        key = line.split("=", 1)[0].lstrip("+~")
        if key in groups:  # a group's option (model=tiny): searched values are applied over it
            continue
        for name in space:
            searched = name.lstrip("+")
            if searched.startswith(key + ".") or key.startswith(searched + "."):
                raise ConfigError(f"{line} overlaps {searched}, which this sweep searches: each "
                                  f"trial would train the fixed value, not the proposed one; drop "
                                  f"{key} from the command line, or search it with a sweep preset "
                                  f"of your own")



def check_recipe(study: optuna.Study, job_cfg: DictConfig, space: dict, heartbeat_s: int) -> None:
    """A study holds trials of one recipe: the settings every trial shares, and which keys it
    searches. The first run that gets past its checks records them (`record_recipe`); a later
    run of the same study with other settings, or searching other keys, is refused."""
    recipe = _recipe(job_cfg, space)
    stored = study.user_attrs.get("recipe") or recipe
    differ = sorted(k for k in set(stored) | set(recipe) if stored.get(k) != recipe.get(k))
    if differ:
        searched = {k for t in study.get_trials(deepcopy=False) for k in t.distributions}

        def setting(values: dict, key: str, searching) -> str:
            if key in values:
                return f"{key}={values[key]}"
            return f"{key} searched" if key in searching else f"no {key}"

        then = ", ".join(setting(stored, k, searched) for k in differ[:3])
        now = ", ".join(setting(recipe, k, space) for k in differ[:3])
        raise ConfigError(f"study '{study.study_name}' was run with {then}; this command has "
                         f"{now}: run it with the study's settings, or start a new study with "
                         f"hydra.sweeper.study_name=<another name>")
    beat = study.user_attrs.get("heartbeat_s", heartbeat_s)
    if beat != heartbeat_s:  # each worker fails others' trials after 3 of its own beats
        raise ConfigError(
            f"study '{study.study_name}' runs with hydra.sweeper.heartbeat_s={beat}; this command "
            f"has {heartbeat_s}: every worker fails a trial that missed 3 of its own beats, "
            f"so all of them need the same; use hydra.sweeper.heartbeat_s={beat}")
    searched_before = study.user_attrs.get("searched")
    if searched_before is None:  # recorded since; older studies: what their trials searched
        searched_before = sorted({k for t in study.get_trials(deepcopy=False)
                                  for k in t.distributions}) or None
    if searched_before is not None and sorted(space) != searched_before:
        raise ConfigError(f"study '{study.study_name}' searches {', '.join(searched_before)}; "
                         f"this command searches {', '.join(sorted(space))}: run it with the "
                         f"study's search space, or start a new study with "
                         f"hydra.sweeper.study_name=<another name>")
    trials = study.get_trials(deepcopy=False)[::-1]  # read once: the latest first
    for key, dist in space.items():  # what Optuna refuses only once a trial is created
        before = next((t.distributions[key] for t in trials if key in t.distributions), None)
        if before is not None and not _compatible(before, dist):
            [then], [now] = _ranges({key: before}).values(), _ranges({key: dist}).values()
            raise ConfigError(
                f"study '{study.study_name}' searched {key} in {then}; this command searches it "
                f"in {now}, which Optuna cannot add to the same study ({_incompatibility(before)}"
                f"): search it as before, or start a new study with "
                f"hydra.sweeper.study_name=<another name>")
    ranges, ranges_before = _ranges(space), study.user_attrs.get("ranges") or {}
    if changed := [k for k in sorted(ranges) if ranges_before.get(k, ranges[k]) != ranges[k]]:
        log.warning("study '%s' searched %s; this run searches %s: new trials come from the new "
                    "ranges, and the earlier trials stay in the study", study.study_name,
                    ", ".join(f"{k} in {ranges_before[k]}" for k in changed),
                    ", ".join(f"{k} in {ranges[k]}" for k in changed))

def record_recipe(study: optuna.Study, job_cfg: DictConfig, space: dict, heartbeat_s: int) -> None:
    if study.user_attrs.get("recipe") is None:
        study.set_user_attr("recipe", _recipe(job_cfg, space))
    if study.user_attrs.get("searched") is None:
        study.set_user_attr("searched", sorted(space))
    if study.user_attrs.get("heartbeat_s") is None:
        study.set_user_attr("heartbeat_s", heartbeat_s)
    if study.user_attrs.get("ranges") != (ranges := _ranges(space)):  # the latest, for the next
        study.set_user_attr("ranges", ranges)


def _recipe(job_cfg: DictConfig, space: dict) -> dict[str, str]:
    """The settings every trial of the sweep shares, as {dotted key: value}: the job's config
    without the searched keys and without what only changes how trials run (NOT_RECIPE)."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if prefix in space or f"+{prefix}" in space or prefix in NOT_RECIPE:
            return
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            out[prefix] = str(node)

    kept = OmegaConf.masked_copy(job_cfg, [k for k in job_cfg if k not in NOT_RECIPE])
    walk(OmegaConf.to_container(kept, resolve=True), "")  # tracking may name hydra: not resolved
    return out


def _ranges(space: dict) -> dict[str, str]:
    """Each searched key's values as a person reads them: [0.01, 1] log, {16, 32, 64}, 1..6."""
    out = {}
    for key, dist in space.items():
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            out[key] = "{" + ", ".join(map(str, dist.choices)) + "}"
        elif isinstance(dist, optuna.distributions.IntDistribution) and not dist.log:
            out[key] = f"{dist.low}..{dist.high}" + (f" step {dist.step}" if dist.step != 1 else "")
        else:
            out[key] = f"[{dist.low:g}, {dist.high:g}]" + (" log" if dist.log else "") + (
                f" step {dist.step:g}" if dist.step else "")
    return out


def _compatible(before, now) -> bool:
    """Whether a study whose trials searched a key with `before` can take trials of `now`: the
    same kind (ints, floats, choices), the same log scale, the same choices (Optuna's rule)."""
    if type(before) is not type(now):
        return False
    if isinstance(before, optuna.distributions.CategoricalDistribution):
        return before.choices == now.choices
    return before.log == now.log


def _incompatibility(before) -> str:
    if isinstance(before, optuna.distributions.CategoricalDistribution):
        return "choices, once searched, stay the same"
    return "a range keeps its kind, ints or floats, and its scale, log or not"


def _ends(dist) -> tuple:
    """The values a distribution can propose at its ends: each choice, or the low and high ends."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return tuple(dist.choices)
    return dist.low, dist.high


def _parses(line: str) -> bool:
    """Whether one search-space line parses into a distribution on its own."""
    try:
        OverridesParser.create().parse_overrides([line])
        create_params_from_overrides([line])
    except Exception:
        return False
    return True


def proposable(shared: DictConfig, space: dict) -> DictConfig:
    """`shared` with each searched key set to a value its range can propose: the checks made once
    for every trial then see a configuration a trial can have, not the preset's own value."""
    cfg = shared.copy()
    for name, dist in space.items():
        if not name.startswith("+"):
            with contextlib.suppress(Exception):  # an absent key or a wrong type: said later
                OmegaConf.update(cfg, name, _ends(dist)[0], merge=False)
    return cfg
