"""Importers: turn public or real data into the focal-stack dataset format (`dfd_ray.focalstack`).

    fod500  FoD500 folder (DefocusNet): five `*All.tif` slices + `*Dpt.exr` depth per scene
    nyuv2   RGB-D pairs (`rgb/NAME.*` + `depth/NAME.*`) rendered to focal stacks, `nyuv2` camera
    stacks  real focal stacks described by a CSV / JSON-lines manifest, one row per slice

Each module holds a config dataclass and `run(cfg) -> dict`, called by `dfd-ray import NAME`.
Every importer checks the whole source layout first and raises one `DatasetError` listing every
layout problem before anything is written; a file that cannot be decoded stops the import while
writing, with its name (see `common.py`).
"""
