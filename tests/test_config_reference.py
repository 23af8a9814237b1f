from pathlib import Path

from dfd_ray import config_reference


def test_the_configuration_reference_is_current():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    assert config_reference.replace_in(doc) == doc, (
        "docs/configuration.md is stale: run python -m dfd_ray.config_reference --write"
    )


def test_reference_lists_nested_keys_with_their_comments():
    text = config_reference.reference()
    assert "| `fit.steps` | int | `120` | Adam steps; each renders `slices_per_step` slices of the stack |" in text
    assert "| `renderer.num_cpus` |" in text and "### `dfd-ray import fod500`" in text


def test_every_field_of_every_command_says_what_it_means():
    blank = [(name, key) for name, cls in config_reference.config_classes().items()
             for key, _, _, meaning in config_reference.rows(cls) if not meaning]
    assert not blank, f"config fields without a # comment: {blank}"


def test_defaults_are_what_a_run_gets_and_comments_span_lines():
    from dfd_ray.train import TrainConfig

    rows = {key: (value, meaning) for key, _, value, meaning in config_reference.rows(TrainConfig)}
    # The section's factory sets it, not the class default (0.5 in RendererPoolConfig).
    assert rows["renderer.num_cpus"][0] == TrainConfig.__dataclass_fields__["renderer"].default_factory().num_cpus
    assert rows["renderer.num_cpus"][0] != 0.5
    assert rows["renderer.fit.eps2d"][1].endswith(")")  # a comment continued on the next line is joined
    imports = {key: meaning for key, _, _, meaning in
               config_reference.rows(config_reference.config_classes()["import fod500"])}
    assert imports["src"] and imports["out"] and imports["shard_size"]  # inherited fields keep their meanings
