"""`dfd-ray validate URI`: list every problem in a focal-stack dataset; non-zero exit if any."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from omegaconf import MISSING

from dfd_ray.focalstack import validate


@dataclass
class ValidateConfig:
    uri: str = MISSING  # dataset root (with train/ and test/) or one split prefix


def run(cfg: ValidateConfig) -> int:
    rows, problems = validate(cfg.uri)
    for problem in problems:
        print(problem)
    verdict = "OK" if not problems else f"{len(problems)} problem(s)"
    print(f"{cfg.uri}: {rows} stack(s) checked, {verdict}", file=sys.stderr if problems else sys.stdout)
    return 1 if problems else 0
