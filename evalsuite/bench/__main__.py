"""``python -m evalsuite.bench``: the latency / throughput table (see :mod:`evalsuite.bench`)."""

from . import main

if __name__ == "__main__":
    main()
