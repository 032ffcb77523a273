"""Snapshot series (llama-imatrix --save-frequency writes NAME.at_N beside NAME), however they are
opened: the main file, one of its snapshots, or a folder holding one collection."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from imatui.live.follow import list_snapshots

_SNAPSHOT = re.compile(r"^(?P<stem>.+)\.at_(?P<n>\d+)$")


def snapshot_family(path: str | Path) -> tuple[Path | None, list[Path]]:
    """For a snapshot NAME.at_N: (NAME when it exists, the other NAME.at_* files by N).

    For any other file: (None, []), since the follower reports its NAME.at_N snapshots itself."""
    path = Path(path).absolute()
    m = _SNAPSHOT.match(path.name)
    if m is None:
        return None, []
    main = path.parent / m.group("stem")
    others = [p for _, p in list_snapshots(main) if p != path]
    return (main if main.is_file() else None), others


def folder_collection(folder: str | Path) -> Path | None:
    """The file to open for a folder that holds one collection and nothing else (NAME and its
    NAME.at_N snapshots, or only the snapshots): NAME when it exists, else the snapshot with the most
    chunks. None otherwise: the browser lets the user choose."""
    folder = Path(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    stems: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        m = _SNAPSHOT.match(name)
        if m and (folder / name).is_file():
            stems.setdefault(m.group("stem"), []).append((int(m.group("n")), name))
    if len(stems) != 1:
        return None
    stem, snaps = next(iter(stems.items()))
    others = [n for n in names if not n.startswith(".") and n != stem and not _SNAPSHOT.match(n)
              and (folder / n).is_file()]
    if others:
        return None  # other files beside the collection: the user chooses in the browser
    if (folder / stem).is_file():
        return folder / stem
    return folder / max(snaps)[1]


@dataclass(frozen=True)
class OpenPlan:
    """What the command line named, as the app opens it."""

    browse_root: Path  # the browser's folder
    initial: str | None  # the file to open (None: the user chooses in the browser)
    series: list[str]  # snapshot files named together: their convergence series
    browse: bool  # show the browser from the start (a folder, several files)


def plan_open(paths: list[str]) -> OpenPlan:
    if len(paths) == 1:
        p = Path(paths[0])
        if p.is_dir():
            found = folder_collection(p)
            return OpenPlan(p, str(found) if found is not None else None, [], True)
        parent = p.parent if str(p.parent) else Path(".")
        return OpenPlan(parent if parent.is_dir() else Path("."), str(p), [], False)
    # several files: a snapshot series; open the newest (the last named), browse the rest
    common = Path(os.path.commonpath([str(Path(p).resolve().parent) for p in paths]))
    return OpenPlan(common, paths[-1], list(paths), True)
