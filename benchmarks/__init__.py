"""objstore's benchmark suite: objstore against the floor (raw lmdb + pickle) and its peers.

Run it from the repository root::

    python -m benchmarks --quick          # under a minute
    python -m benchmarks --full           # under ten minutes on 2 cores

See ``benchmarks/README.md`` for the options and ``docs/benchmarks.md`` for
the method and the latest figures. The suite is not a test suite: pytest
collects only ``tests/``.
"""
