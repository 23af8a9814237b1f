"""`ray job submit -- python jobs/train.py --data URI --out URI [key=value ...]`: same code path as
`dfd-ray train`."""

import sys

from dfd_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
