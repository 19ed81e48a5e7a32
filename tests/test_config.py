import shutil

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from sweeper.config import validate
from sweeper.errors import ConfigError
from sweeper.overrides import check_overrides
from tests.conftest import CONF, compose_cfg

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_the_documented_groups_exist():
    assert set(GROUPS) >= {"model", "data", "augment", "optimizer", "schedule", "trainer", "tracking",
                           "experiment"}
    assert set(options("augment")) >= {"none", "seed", "standard"}
    assert set(options("schedule")) >= {"constant", "step", "cosine", "onecycle"}
    assert set(options("optimizer")) >= {"sgd", "adamw"}
    assert set(options("experiment")) >= {"seed", "seed_aug", "smoke"}


@pytest.mark.parametrize("override", [f"{g}={o}" for g in GROUPS for o in options(g)])
def test_every_option_of_every_group_composes_and_validates(override):
    cfg = compose_cfg([override])
    validate(cfg)
    assert cfg.optimizer.lr > 0


def test_defaults():
    cfg = compose_cfg()
    assert list(cfg.model.blocks) == [2, 2, 2, 2] and cfg.model.width == 64
    assert cfg.data.val_size == 5000 and cfg.data.train_size is None
    assert cfg.trainer.device == "auto" and cfg.seed == 0


def test_seed_preset_is_the_seed_script():
    cfg = compose_cfg(["experiment=seed"])
    assert list(cfg.model.blocks) == [2, 2, 2, 2] and cfg.trainer.batch_size == 4
    assert cfg.optimizer.name == "sgd" and cfg.optimizer.lr == 0.01 and cfg.optimizer.momentum == 0.9
    assert not cfg.optimizer.nesterov and cfg.optimizer.weight_decay == 0
    assert cfg.trainer.epochs == 5 and cfg.schedule.name == "constant"
    assert list(cfg.data.mean) == [0.5] * 3 and list(cfg.data.std) == [0.5] * 3
    assert not cfg.augment.flip and cfg.augment.crop == 0
    assert cfg.trainer.precision == "fp32"  # auto would be bf16 on a recent GPU or CPU


def test_seed_aug_preset():
    cfg = compose_cfg(["experiment=seed_aug"])
    assert list(cfg.model.blocks) == [4, 5, 6, 3]
    assert cfg.augment.flip and cfg.augment.crop == 28 and cfg.augment.pad == 0
    assert cfg.trainer.batch_size == 4


def test_blocks_from_the_command_line_as_a_list_and_per_stage():
    assert list(compose_cfg(["model.blocks=[4,5,6,3]"]).model.blocks) == [4, 5, 6, 3]
    cfg = compose_cfg(["model.blocks.0=5", "model.blocks.3=1"])
    assert list(cfg.model.blocks) == [5, 2, 2, 1]
    assert all(isinstance(b, int) for b in cfg.model.blocks)


@pytest.mark.parametrize("override", ["model.blok=3", "trainer.epoch=3", "optimizer.learning_rate=0.1"])
def test_a_typo_fails_at_compose_time(override):
    with pytest.raises(ConfigCompositionException, match="Could not override"):
        compose_cfg([override])


@pytest.mark.parametrize("override", ["model.width=abc", "trainer.epochs=1.5", "model.blocks=[2,x,2,2]",
                                      "trainer.compile=maybe"])
def test_a_wrong_type_fails_at_compose_time(override):
    with pytest.raises(ConfigCompositionException):
        compose_cfg([override])


def test_an_unknown_group_option_fails_naming_the_options():
    with pytest.raises(MissingConfigException, match="standard"):
        compose_cfg(["augment=fancy"])


@pytest.mark.parametrize("override, field", [
    ("model.blocks=[2,2,2]", "model.blocks"),
    ("model.blocks=[2,2,0,2]", "model.blocks"),
    ("model.blocks=[2,2,2,2,2]", "model.blocks"),
    ("model.width=0", "model.width"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.lr=-0.1", "optimizer.lr"),
    ("optimizer.lr=inf", "optimizer.lr"),
    ("model.num_classes=5", "model.num_classes"),
    ("optimizer.name=adam", "optimizer.name"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.device=tpu", "trainer.device"),
    ("trainer.precision=fp8", "trainer.precision"),
    ("trainer.compile_mode=fast", "trainer.compile_mode"),
    ("schedule.name=exp", "schedule.name"),
    ("schedule.warmup=1.0", "schedule.warmup"),
    ("data.val_size=0", "data.val_size"),
    ("data.train_size=0", "data.train_size"),
    ("augment.crop=44", "augment.crop"),
    ("tracking.uri=bogus://x", "tracking.uri"),
    ("tracking.uri=file:///tmp/mlruns", "tracking.uri"),
    ("tracking.uri=mlruns", "tracking.uri"),
    ("tracking.experiment=", "tracking.experiment"),  # was blamed on tracking.uri, in MLflow's words
    ("tracking.experiment=' '", "tracking.experiment"),
])
def test_validate_names_the_field_and_what_is_allowed(override, field):
    cfg = compose_cfg([override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert message.startswith(f"{field}=") and "\n" not in message
    assert any(word in message for word in ("allowed", "a ", "an ", "fraction", "0 (off)", "10 (the",
                                            "sqlite:///"))


def test_a_tracking_uri_mlflow_cannot_store_runs_in_is_refused_without_showing_its_password():
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(["tracking.uri=postgres://me:secret@127.0.0.1/test"]))
    assert str(err.value).startswith("tracking.uri='postgres://...' is invalid: sqlite:///file.db")
    assert "secret" not in str(err.value)
    for uri in ("sqlite:///a.db", "postgresql+psycopg://me:s@127.0.0.1/test", "http://127.0.0.1:5000",
                "https://mlflow.example"):
        validate(compose_cfg([f"tracking.uri={uri}"]))
    validate(compose_cfg(["tracking=off", "tracking.uri=mlruns"]))  # not used: not checked


def test_validate_lists_the_allowed_names():
    with pytest.raises(ConfigError, match="auto, cpu, cuda"):
        validate(compose_cfg(["trainer.device=gpu"]))


def test_config_is_plain_yaml_for_the_record():
    text = OmegaConf.to_yaml(compose_cfg(["experiment=smoke"]), resolve=True)
    assert "blocks:" in text and "lr:" in text


def test_a_typo_inside_a_preset_file_fails_at_compose_time(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "experiment" / "typo.yaml").write_text("# @package _global_\ntrainer:\n  epoch: 3\n")
    with pytest.raises(ConfigCompositionException):
        compose_cfg(["experiment=typo"], conf_dir=conf)


@pytest.mark.parametrize("override, message", [
    ("model.blok=3", "model.blok is not a config key (did you mean model.blocks?): model has "
                     "blocks, width, num_classes"),
    ("trainer.epoch=1", "trainer.epoch is not a config key (did you mean trainer.epochs?)"),
    ("sed=1", "sed is not a config key (did you mean seed?): the config has model, data,"),
    ("model.blocks.4=2", "model.blocks.4 is not a config key: model.blocks has 4 items by default"),
    ("trainer.epochs=abc", "trainer.epochs=abc is invalid: an int"),
    ("trainer.epochs=1.5", "trainer.epochs=1.5 is invalid: an int"),
    ("trainer.epochs=null", "trainer.epochs=null is invalid: an int"),
    ("model.blocks=[2,2,2,2.5]", "model.blocks=[2,2,2,2.5] is invalid: a list of ints"),
    ("model.blocks.0=x", "model.blocks.0=x is invalid: an int"),
    ("+trainer.epoch=5", "trainer.epoch is not a config key (did you mean trainer.epochs?)"),
    ("sweep=smoke,lr", "sweep=smoke,lr is invalid: a command runs one sweep preset, which sets how "
                       "its jobs run; run one command per preset"),
    ("sweep=glob(*)", "sweep=glob(*) is invalid: a command runs one sweep preset"),
    ("launcher=local,slurm", "launcher=local,slurm is invalid: a command runs one launcher preset"),
    ("+trainer.epochs=5", "+trainer.epochs=5 adds a key, but trainer.epochs exists: set it with "
                          "trainer.epochs=5 (++trainer.epochs=5 sets or adds)"),
    ("+data.mean=[a,b,c]", "data.mean=[a,b,c] is invalid: a list of floats"),  # merged by Hydra: checked
    ("hydra/sweeper/sampler=foo", "hydra/sweeper/sampler=foo is invalid: allowed values are cmaes"),
    ("hydra.sweeper.n_trials=abc", "hydra.sweeper.n_trials=abc is invalid: an int"),
    ("trainer.tta=maybe", "trainer.tta=maybe is invalid: true or false"),
    ("model.width=4,abc", "model.width=abc is invalid: an int"),
    ("hydra.sweeper.sampler.seed=abc", "hydra.sweeper.sampler.seed=abc is invalid: an int or null"),
    ("hydra.sweeper.sampler.seeed=1", "hydra.sweeper.sampler.seeed is not a key of any Optuna "
                                      "sampler (did you mean hydra.sweeper.sampler.seed?)"),
    ("hydra.sweeper.n_trial=3", "hydra.sweeper.n_trial is not a config key (did you mean "
                                "hydra.sweeper.n_trials?): the Optuna sweeper has sampler, pruner,"),
])
def test_check_overrides_names_an_unknown_key_or_a_wrong_type_in_one_line(override, message):
    with pytest.raises(ConfigError) as info:
        check_overrides(["sweep=smoke", override])
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


@pytest.mark.parametrize("override", [
    "data.train_size=null", "trainer.compile=true", "model.blocks=[4,5,6,3]", "model.blocks.0=3",
    "optimizer.lr=1e-3", "optimizer=adamw", "+extra=1", "model.width=16,32", "seed=${oc.env:SEED,0}",
    "model.blocks.0=range(1,4)", "optimizer.lr=tag(log,interval(0.01,1.0))",
    "hydra/sweeper/sampler=random", "hydra.sweeper.n_trials=5", "hydra.sweeper.storage=null",
    "hydra.sweeper.sampler.seed=1", "hydra.sweeper.sampler.n_startup_trials=2",
    "hydra.sweeper.sampler.population_size=10",
    "+data.mean=[0.5,0.5,0.5]", "+model={width:8}", "++trainer.epochs=3",  # Hydra merges or sets
])
def test_check_overrides_lets_valid_overrides_and_sweeps_through(override):
    check_overrides(["sweep=smoke", override])


@pytest.mark.parametrize("overrides", [["hydra.sweeper.n_trials=5"], ["hydra.sweeper.storage=null"]])
def test_a_setting_of_the_optuna_sweeper_without_a_sweep_preset_says_to_add_one(overrides):
    """Hydra's own error advises `+hydra.sweeper.n_trials=5`, which is not the fix."""
    with pytest.raises(ConfigError) as info:
        check_overrides(overrides)
    assert str(info.value).endswith("is a setting of the Optuna sweeper, which a sweep preset "
                                    "chooses: add sweep=<preset> (blocks_lr, blocks_size, lr, smoke) "
                                    "and --multirun")
    check_overrides(["hydra/sweeper=optuna_pruning", *overrides])  # chosen by hand: fine
    check_overrides(["experiment=smoke", *overrides])  # a preset (a user's) may choose it


def test_a_sampler_key_is_checked_against_the_sampler_chosen_on_the_command_line():
    check_overrides(["hydra/sweeper/sampler=nsgaii", "hydra.sweeper.sampler.population_size=10"])
    with pytest.raises(ConfigError) as info:
        check_overrides(["hydra/sweeper/sampler=random", "hydra.sweeper.sampler.n_startup_trials=2"])
    assert str(info.value).startswith("hydra.sweeper.sampler.n_startup_trials is not a config "
                                      "key: the random sampler has ")
    assert "seed" in str(info.value) and "\n" not in str(info.value)


def test_a_key_given_twice_is_pointed_out(caplog):
    """Hydra takes the last value without a word: `-m trainer.epochs=1,2 trainer.epochs=3` runs
    one job, not two."""
    check_overrides(["trainer.epochs=1,2", "model.width=8", "trainer.epochs=3"], multirun=True)
    assert [r.getMessage() for r in caplog.records] == [
        "warning: trainer.epochs is given twice (trainer.epochs=1,2, then trainer.epochs=3): the "
        "last one counts"]
