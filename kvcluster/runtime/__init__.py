"""The process runtime: ZeroMQ drivers that run the cores in real processes, and the supervisor."""
