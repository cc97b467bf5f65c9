"""Facts of a topology and MATCHA's design on it: ``python scripts/topology.py NAME [key=value ...]``
(same as ``distlib-topology``; ``--plot out.png`` draws it)."""
from distlib.topology.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
