"""The sans-I/O core: the logic of master and storage nodes as state machines, with no sockets and no clocks."""
