"""The options that many ``kvcluster`` commands share, as Typer annotations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Home = Annotated[
    Path | None,
    typer.Option(
        "--home", envvar="KVCLUSTER_HOME", help="State directory of the cluster (default: ~/.local/state/kvcluster)."
    ),
]
Master = Annotated[
    str | None, typer.Option("--master", help="Master address HOST:PORT (default: from the state directory).")
]
Cluster = Annotated[
    Path | None,
    typer.Option(
        "--cluster", envvar="KVCLUSTER_CLUSTER", help="Cluster file (kvcluster init) of a cluster on many hosts."
    ),
]
Verbose = Annotated[bool, typer.Option("-v", "--verbose", help="Explain routing, timeouts and retries on stderr.")]
Timeout = Annotated[float, typer.Option("--timeout", min=0.1, help="Give up after this many seconds.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]
