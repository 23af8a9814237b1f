"""The benchmark and check scripts under jobs/, imported as modules for tests."""

import importlib.util
from pathlib import Path
from types import ModuleType

JOBS = Path(__file__).resolve().parent.parent / "jobs"


def load_job(name: str) -> ModuleType:
    """jobs/<name>.py as a module (its main() not run)."""
    spec = importlib.util.spec_from_file_location(name, JOBS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
