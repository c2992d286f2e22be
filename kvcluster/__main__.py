"""Entry point for ``python -m kvcluster``."""

from kvcluster.cli import main

main()
