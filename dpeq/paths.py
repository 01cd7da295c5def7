"""Where dpeq looks for files that live outside the package.

The repository is expected to sit beside a `shared/` folder (as in CI and in
the development checkout); `DPEQ_SHARED_DIR` overrides that location.
"""

import os
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def shared_dir() -> pathlib.Path:
  """The `shared/` folder beside the repository (may not exist)."""
  env = os.environ.get("DPEQ_SHARED_DIR")
  if env:
    return pathlib.Path(env)
  return REPO_ROOT.parent / "shared"


def shared_data_dir(name: str) -> pathlib.Path | None:
  """`shared/data/<name>` if it exists, else None (online users)."""
  path = shared_dir() / "data" / name
  return path if path.is_dir() else None
