"""Compare runs: ``python scripts/compare.py RUN_DIR... --out report/`` (same as ``distlib-compare``)."""
from distlib.compare import main

if __name__ == "__main__":
    main()
