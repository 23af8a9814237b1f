"""`dfd-ray` command line: every command is a typed config plus a `run(cfg)` function.

    dfd-ray synth --out URI [key=value ...]
    dfd-ray validate URI
    dfd-ray show URI --out FILE.png [key=value ...]
    dfd-ray import {fod500,nyuv2,stacks} SRC --out URI [key=value ...]
    dfd-ray fit --data URI --out URI [fit.steps=...]
    dfd-ray teach --data URI [splats=URI]
    dfd-ray train --data URI --out URI [steps=...]
    dfd-ray eval --model URI --data URI --out DIR
    dfd-ray infer --model URI --input URI --out URI [manifest=URI] [camera.f_number=...]
    dfd-ray demo [--out DIR]

Positional arguments and `--out` are shorthands for the config keys `src`/`uri` and `out`;
`--config FILE.yaml` loads a YAML layer under the overrides. Config errors fail here, before
any work starts.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from dfd_ray import interrupts
from dfd_ray.config import ConfigError, load_config
from dfd_ray.focalstack import DatasetError
from dfd_ray.storage import StoreUnavailable


@dataclass(frozen=True)
class Command:
    module: str  # holds `<config_class>` and `run(cfg) -> dict`
    config_class: str
    help: str
    positional: str | None = None  # config key the positional argument fills
    out_flag: bool = True
    data_flag: bool = False  # `--data URI` fills config key `data`
    model_flag: bool = False  # `--model URI` fills config key `model`
    input_flag: bool = False  # `--input URI` fills config key `input`
    resume: str = ""  # what running the same command again after an interrupt does


COMMANDS: dict[str, Command] = {
    "synth": Command("dfd_ray.synth", "SynthConfig", "generate a synthetic focal-stack dataset"),
    "validate": Command("dfd_ray.validate", "ValidateConfig", "list every problem in a dataset", "uri", False),
    "show": Command("dfd_ray.contact_sheet", "ShowConfig", "contact sheet PNG of some stacks", "uri"),
    "fit": Command("dfd_ray.fit_job", "FitJobConfig", "fit Gaussian splats to every scene (Ray tasks)", data_flag=True,
                   resume="scenes already fitted are kept"),
    "teach": Command("dfd_ray.teachers", "TeachConfig", "defocus-map teachers for every training scene (Ray tasks)",
                     out_flag=False, data_flag=True, resume="finished shards are kept"),
    "train": Command("dfd_ray.train", "TrainConfig", "train SDNet + DepthNet (Ray Train)", data_flag=True,
                     resume="it resumes from the last checkpoint"),
    "eval": Command("dfd_ray.evaluate", "EvalConfig", "depth metrics of a model on held-out stacks", data_flag=True, model_flag=True),
    "infer": Command("dfd_ray.infer", "InferConfig", "depth for every photo under a prefix (Ray Data batch job)",
                     model_flag=True, input_flag=True, resume="photos already written are skipped"),
    "demo": Command("dfd_ray.demo", "DemoConfig", "run the pipeline end to end on generated data"),
}
IMPORTERS: dict[str, Command] = {
    "fod500": Command("dfd_ray.importers.fod500", "Fod500ImportConfig", "FoD500 folder (*All.tif, *Dpt.exr)", "src"),
    "nyuv2": Command("dfd_ray.importers.nyuv2", "Nyuv2ImportConfig", "RGB-D pairs rendered to focal stacks", "src"),
    "stacks": Command("dfd_ray.importers.stacks", "StacksImportConfig", "real focal stacks from a manifest", "src"),
}


def _add(sub: argparse._SubParsersAction, name: str, cmd: Command) -> None:
    p = sub.add_parser(name, help=cmd.help, description=cmd.help)
    if cmd.positional:
        p.add_argument(cmd.positional, help=f"sets config key '{cmd.positional}'")
    if cmd.out_flag:
        p.add_argument("--out", help="sets config key 'out'")
    if cmd.data_flag:
        p.add_argument("--data", help="sets config key 'data'")
    if cmd.model_flag:
        p.add_argument("--model", help="sets config key 'model'")
    if cmd.input_flag:
        p.add_argument("--input", help="sets config key 'input'")
    p.add_argument("--config", help="YAML file of config values (overrides still win)")
    p.set_defaults(command=cmd)
    p.epilog = "Any number of key=value config overrides may follow, before or after the flags."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfd-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="name", required=True)
    for name, cmd in COMMANDS.items():
        _add(sub, name, cmd)
    imp = sub.add_parser("import", help="import public or real focal-stack data").add_subparsers(
        dest="importer", required=True
    )
    for name, cmd in IMPORTERS.items():
        _add(imp, name, cmd)
    return parser


def resolve(args: argparse.Namespace):
    """(config instance, run function) for parsed arguments; raises ConfigError."""
    cmd: Command = args.command
    module = importlib.import_module(cmd.module)
    overrides = list(args.overrides)
    if cmd.positional and getattr(args, cmd.positional, None) is not None:
        overrides.insert(0, f"{cmd.positional}={getattr(args, cmd.positional)}")
    if cmd.out_flag and args.out is not None:
        overrides.insert(0, f"out={args.out}")
    if cmd.data_flag and args.data is not None:
        overrides.insert(0, f"data={args.data}")
    if cmd.model_flag and args.model is not None:
        overrides.insert(0, f"model={args.model}")
    if cmd.input_flag and args.input is not None:
        overrides.insert(0, f"input={args.input}")
    cfg = load_config(getattr(module, cmd.config_class), overrides, yaml_uri=args.config)
    return cfg, module.run


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may stand anywhere after the positional argument, so they are
    # collected from what the flags and positionals leave over.
    args, rest = parser.parse_known_args(argv)
    bad = [token for token in rest if "=" not in token or token.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (overrides are key=value)")
    args.overrides = rest
    try:
        cfg, run = resolve(args)
    except ConfigError as exc:
        print(f"dfd-ray: config error: {exc}", file=sys.stderr)
        return 2
    interrupts.install()
    try:
        result = run(cfg)
    except (KeyboardInterrupt, SystemExit) as exc:
        # While ray.init runs, its own SIGTERM handler is in place: it raises SystemExit(15).
        if isinstance(exc, SystemExit) and exc.code != signal.SIGTERM:
            raise
        again = f"; run the same command again: {args.command.resume}" if args.command.resume else ""
        name = interrupts.received or ("SIGTERM" if isinstance(exc, SystemExit) else "SIGINT")
        print(f"dfd-ray {args.name}: stopped by {name}{again}", file=sys.stderr)
        return 130
    except ConfigError as exc:  # checks that need the inputs (paths exist, sizes agree) run first in run()
        print(f"dfd-ray: config error: {exc}", file=sys.stderr)
        return 2
    except DatasetError as exc:
        print(f"dfd-ray: {exc}", file=sys.stderr)
        return 1
    except StoreUnavailable as exc:  # from a Ray task too, where the message carries its traceback
        lines = [line for line in str(exc).splitlines() if "the object store did not answer" in line]
        print(f"dfd-ray: {(lines or [str(exc)])[-1].strip()}; run the same command again when it answers"
              + (f": {args.command.resume}" if args.command.resume else ""), file=sys.stderr)
        return 1
    if isinstance(result, int):
        return result
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
