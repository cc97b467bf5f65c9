"""Train with distlib: ``python scripts/train.py [hydra overrides]`` (same as ``distlib-train``)."""
import sys

try:
    from distlib.cli import main
except ImportError:     # ``import distlib`` found another project of that name (PyPI's distlib)
    import distlib
    sys.exit(f"distlib-train: 'import distlib' finds {getattr(distlib, '__file__', distlib)}, another project "
             f"named distlib (PyPI's, which virtualenv depends on), not this one: give this project its own "
             f"environment (README: Set-up)")

if __name__ == "__main__":
    main()
