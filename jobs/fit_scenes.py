"""`ray job submit -- python jobs/fit_scenes.py --data URI --out URI [fit.steps=...]`: same code
path as `dfd-ray fit`."""

import sys

from dfd_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["fit", *sys.argv[1:]]))
