"""Train with distlib: ``python scripts/train.py [hydra overrides]`` (same as ``distlib-train``)."""
from distlib.cli import main

if __name__ == "__main__":
    main()
