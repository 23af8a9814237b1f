"""`ray job submit -- python jobs/make_dataset.py --out URI [key=value ...]`: same code path as
`dfd-ray synth`."""

import sys

from dfd_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
