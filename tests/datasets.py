"""Small generated focal-stack datasets for tests."""

from dfd_ray import synth
from dfd_ray.config import load_config


def tiny_dataset(root, *overrides: str) -> str:
    """`dfd-ray synth` of 2 training and 1 test stack of 32² (seed 3) into `root`; `overrides` as on the command line."""
    synth.run(load_config(synth.SynthConfig, [f"out={root}", "n_scenes=2", "n_test=1", "height=32", "width=32",
                                              "seed=3", *overrides]))
    return str(root)
