"""The exit codes of kvcluster's own processes, which their supervisor acts on."""

FENCED_EXIT = 3  # a storage node the master declared dead: on separate hosts its supervisor starts it again
