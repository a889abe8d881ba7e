"""A local runtime that survives its process: every write moto applies is appended to a
journal on disk (``tap``, ``journal``), and a new process replays it into a fresh moto
(``replay``) before its workers start (``state_dir``)."""
