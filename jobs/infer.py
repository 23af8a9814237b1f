"""`ray job submit -- python jobs/infer.py --model URI --input URI --out URI [key=value ...]`: same
code path as `dfd-ray infer`."""

import sys

from dfd_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
