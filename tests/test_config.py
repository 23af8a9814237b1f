import pytest

from dfd_ray import cli, synth
from dfd_ray.config import ConfigError, load_config, save_config


def test_defaults_and_overrides_are_typed():
    cfg = load_config(synth.SynthConfig, ["out=/tmp/x", "height=64", "noise_std=0", "min_depth=0.2"])
    assert isinstance(cfg, synth.SynthConfig)
    assert (cfg.height, cfg.width, cfg.noise_std, cfg.min_depth) == (64, 128, 0.0, 0.2)


def test_unknown_key_names_key_and_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'heigth'.*'height'"):
        load_config(synth.SynthConfig, ["out=/tmp/x", "heigth=64"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"config key 'n_scenes'.*could not be converted to Integer"):
        load_config(synth.SynthConfig, ["out=/tmp/x", "n_scenes=many"])


def test_invalid_choice_lists_choices():
    with pytest.raises(ConfigError, match=r"'preset'.*valid choices: \['fod500', 'nyuv2'\]"):
        load_config(synth.SynthConfig, ["out=/tmp/x", "preset=canon"])


def test_range_checks_run_at_load():
    with pytest.raises(ConfigError, match="min_depth"):
        load_config(synth.SynthConfig, ["out=/tmp/x", "min_depth=2", "max_depth=1"])


def test_missing_required_and_malformed_override():
    with pytest.raises(ConfigError, match=r"'out' is required"):
        load_config(synth.SynthConfig, [])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(synth.SynthConfig, ["out"])


def test_yaml_layer_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("out: /tmp/y\nheight: 32\nwidth: 48\n")
    cfg = load_config(synth.SynthConfig, ["width=40"], yaml_uri=str(path))
    assert (cfg.out, cfg.height, cfg.width) == ("/tmp/y", 32, 40)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(synth.SynthConfig, [], yaml_uri=str(tmp_path / "nope.yaml"))


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(synth.SynthConfig, [f"out={tmp_path}", "seed=7"])
    uri = save_config(cfg, str(tmp_path))
    assert load_config(synth.SynthConfig, [], yaml_uri=uri) == cfg


def test_cli_config_error_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "never"
    assert cli.main(["synth", "--out", str(out), "n_scenes=-3"]) == 2
    assert "config error" in capsys.readouterr().err
    assert not out.exists()


def _named_experiments():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "configs"
    return sorted(root.glob("*/*.yaml"))


@pytest.mark.parametrize("path", _named_experiments(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_named_experiment_config_loads_for_its_command(path):
    """configs/<command>/<name>.yaml: every key exists in that command's config and holds a valid value."""
    import dataclasses
    import importlib

    from omegaconf import MISSING, OmegaConf

    command = cli.COMMANDS[path.parent.name]
    schema = getattr(importlib.import_module(command.module), command.config_class)
    required = [f"{f.name}=x" for f in dataclasses.fields(schema) if f.default is MISSING]
    cfg = load_config(schema, required, yaml_uri=str(path))
    layer = OmegaConf.to_container(OmegaConf.load(path))
    assert layer, f"{path} sets nothing"
    for key, value in layer.items():
        held = getattr(cfg, key)
        if isinstance(value, dict):
            assert all(getattr(held, k) == v for k, v in value.items()), (key, value)
        else:
            assert held == value, (key, held, value)


def test_the_renderer_pool_takes_the_runs_store_and_data_without_changing_the_config():
    from dfd_ray.train import TrainConfig

    cfg = load_config(TrainConfig, ["data=D", "out=O"])
    assert cfg.renderer.splat_store == "" and cfg.renderer.data == ""  # saved as given
    assert (cfg.renderer_config().splat_store, cfg.renderer_config().data) == ("O/splats", "D")
    assert load_config(TrainConfig, ["data=D", "out=O", "splats=S"]).renderer_config().splat_store == "S"
    own = load_config(TrainConfig, ["data=D", "out=O", "renderer.splat_store=R", "renderer.data=E"])
    assert (own.renderer_config().splat_store, own.renderer_config().data) == ("R", "E")
