"""``python -m distlib [overrides]``: the same as ``distlib-train`` (e.g. where no console
script is on PATH, or under ``torchrun -m distlib``)."""
from distlib.cli import main

if __name__ == "__main__":
    main()
