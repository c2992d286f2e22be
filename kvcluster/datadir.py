"""Where a cluster keeps its data between runs, and the shape it was started with.

Each storage node keeps its log and snapshots in ``<root>/serverN/``; the
root is ``<home>/data`` unless ``up --data-dir`` moves it. ``shape.json`` in
the root records the number of nodes and replicas, so that ``up`` on a root
that holds data starts the same cluster again, and refuses another shape
rather than scatter the data over a placement that does not match it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from kvcluster.errors import ClusterShapeMismatch

DATA_DIR = "data"
SHAPE_FILE = "shape.json"
FSYNC_POLICIES = ("always", "everysec", "no")


@dataclass(frozen=True)
class Storage:
    """How the nodes of a cluster keep their data: where, with which fsync policy, how often they snapshot."""

    root: str
    fsync: str = "everysec"
    snapshot_after: int = 64 << 20  # bytes of log since the last snapshot before the next one starts

    def node_dir(self, node_id: int) -> Path:
        return Path(self.root) / f"server{node_id}"

    def node_args(self, node_id: int) -> list[str]:
        """The ``_node`` options that give node ``node_id`` its data directory and policy."""
        return [
            "--data-dir",
            str(self.node_dir(node_id)),
            "--fsync",
            self.fsync,
            "--snapshot-after",
            str(self.snapshot_after),
        ]


@dataclass(frozen=True)
class Shape:
    nodes: int
    rep: int


def default_root(home: Path) -> Path:
    return home / DATA_DIR


def stored_shape(root: Path) -> Shape | None:
    """The shape of the cluster whose data ``root`` holds, or ``None`` when it holds none."""
    try:
        raw = json.loads((root / SHAPE_FILE).read_text())
        return Shape(int(raw["nodes"]), int(raw["rep"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise ClusterShapeMismatch(f"unreadable {root / SHAPE_FILE}: {exc}") from None


def record_shape(root: Path, shape: Shape) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / (SHAPE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(shape)))
    tmp.replace(root / SHAPE_FILE)


def check_shape_matches(root: Path, shape: Shape) -> bool:
    """True when ``root`` holds the data of a cluster of this shape, False when it holds none; else refuse."""
    stored = stored_shape(root)
    if stored is None:
        return False
    if stored != shape:
        raise ClusterShapeMismatch(
            f"{root} holds the data of a cluster of {stored.nodes} nodes with {stored.rep} replicas, "
            f"not {shape.nodes} with {shape.rep}: start it as it was (kvcluster up --nodes {stored.nodes} "
            f"--rep {stored.rep}) and change it with add-node or remove-node, or delete it with kvcluster down --purge"
        )
    return True


def purge(root: Path) -> bool:
    """Delete every node's data; True if there was any."""
    if not root.exists():
        return False
    shutil.rmtree(root)
    return True
