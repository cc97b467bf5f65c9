"""This project shares its import name with PyPI's ``distlib`` (packaging utilities, a
dependency of virtualenv): installing either into an environment replaces the other's files
and metadata. The project keeps the name; it needs an environment of its own, and
``distlib-train`` says so when it finds the other one installed beside it.
"""
from __future__ import annotations

#: a console script only this project declares: how its installed metadata is told apart
OUR_SCRIPT = "distlib-train"


def foreign_distlib(path: list[str] | None = None) -> str | None:
    """One line naming an installed distribution called ``distlib`` that is not this project
    (None if there is none). ``path``: where to look (default ``sys.path``)."""
    import importlib.metadata as md
    kwargs = {"name": "distlib"} if path is None else {"name": "distlib", "path": path}
    for dist in md.distributions(**kwargs):
        if any(ep.name == OUR_SCRIPT for ep in dist.entry_points):
            continue
        where = dist.locate_file("")
        return (f"warning: another project named distlib is installed in this environment ({dist.metadata['Name']} "
                f"{dist.version} in {where}: PyPI's distlib, which virtualenv depends on); it shares this project's "
                f"import name and installing either replaces the other: give this project its own environment "
                f"(README: Set-up)")
    return None
