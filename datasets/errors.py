"""The user errors of the data-set code (one-line messages; the command lines exit with status 2)."""
from errors import UserError


class DatasetNotFound(UserError):
    """The data set's files are in none of the searched places and could not be downloaded."""


class DataFileError(UserError, ValueError):
    """A data file is there but unusable (malformed, crafted, inconsistent, empty).

    The message is one line: the file and what is wrong with it.  A ValueError, as the bad-file
    errors of read_idx always were.
    """
