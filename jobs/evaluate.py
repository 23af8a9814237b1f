"""`ray job submit -- python jobs/evaluate.py --model URI --data URI --out URI`: same code path as
`dfd-ray eval`."""

import sys

from dfd_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
