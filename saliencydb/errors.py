"""Named exceptions. The CLI turns each into one line of text and a non-zero exit code."""


class SaliencyDBError(Exception):
    """Base class: a problem the user can fix; its message says what and how."""


class SpecError(SaliencyDBError):
    """A data, model or transform spec string is malformed or points at nothing."""


class DataError(SaliencyDBError):
    """A sample or dataset could not be read."""


class ModelError(SaliencyDBError):
    """A model could not be built, loaded or profiled."""


class WeightsUnavailableError(ModelError):
    """Weights would have to be downloaded and cannot be."""


class DatabaseError(SaliencyDBError):
    """A database directory is missing, corrupt, or from an incompatible version."""


class LockedError(DatabaseError):
    """Another writer holds the database lock."""


class QueryError(SaliencyDBError):
    """A query names something the database does not hold, or is malformed."""


class DamagedError(DatabaseError):
    """A committed file is missing, truncated or does not match its checksum."""


class DiskFullError(DatabaseError):
    """A write ran out of space; the database is at its last commit."""


class ReadOnlyError(DatabaseError):
    """The database directory cannot be written (read-only medium or permissions)."""


class StaleError(DatabaseError):
    """A result was computed from a version that is no longer current; it was not stored."""
