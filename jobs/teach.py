"""`ray job submit -- python jobs/teach.py --data URI [splats=URI]`: same code path as `dfd-ray teach`."""

import sys

from dfd_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["teach", *sys.argv[1:]]))
