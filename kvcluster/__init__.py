"""kvcluster: a replicated, sharded key-value store you can run as a whole cluster on a laptop."""

__version__ = "0.1.0"
