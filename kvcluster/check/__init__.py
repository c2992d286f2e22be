"""Checking tools: recorded operation histories and the linearizability checker (the simulator is ``kvcluster.sim``)."""
