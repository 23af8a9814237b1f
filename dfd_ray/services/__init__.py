"""Ray services: per-scene Gaussian-splat renderers behind a pool (renderer.py, pool.py)."""
