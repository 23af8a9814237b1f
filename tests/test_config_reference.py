from pathlib import Path

from dfd_ray import config_reference


def test_readme_configuration_reference_is_current():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert config_reference.replace_in(readme) == readme, (
        "README.md's configuration reference is stale: run python -m dfd_ray.config_reference --write"
    )


def test_reference_lists_nested_keys_with_their_comments():
    text = config_reference.reference()
    assert "| `fit.steps` | int | `120` | Adam steps; each renders every slice once |" in text
    assert "| `renderer.num_cpus` |" in text and "### `dfd-ray import fod500`" in text
