"""The core's user-facing errors, importable without torch: the command line catches them and prints
their message, which says what is wrong and how to fix it."""


class ModelLoadError(RuntimeError):
    """A model name, tag or checkpoint that cannot be loaded."""


class DatabaseError(RuntimeError):
    """A database that cannot be built or used."""
