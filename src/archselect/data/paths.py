"""Where dataset files are looked for and downloaded to."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable


def default_data_dir() -> Path:
    """$ARCHSELECT_DATA, else ~/.cache/archselect/data (never inside the repository)."""
    env = os.environ.get("ARCHSELECT_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "archselect" / "data"


def data_root(data_dir: str | os.PathLike | None) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def find_file(names: Iterable[str], dirs: Iterable[Path]) -> Path | None:
    """The first existing file named one of ``names`` in the first of ``dirs`` that has one."""
    names = list(names)
    for d in dirs:
        for n in names:
            if (d / n).is_file():
                return d / n
    return None


def describe_dirs(dirs: Iterable[Path]) -> str:
    return ", ".join(str(d) for d in dict.fromkeys(dirs))
