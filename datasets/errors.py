"""The user errors of the data-set code (one-line messages; runner.run_cli exits with status 2)."""


class DatasetNotFound(Exception):
    """The data set's files are in none of the searched places and could not be downloaded."""


class DatasetError(DatasetNotFound, ValueError):
    """A data file is there but unusable (malformed, crafted, inconsistent, empty).

    The message is one line: the file and what is wrong with it.  A DatasetNotFound, so every
    caller that reports missing data as a user error reports this one too; a ValueError, as
    the bad-file errors of read_idx always were.
    """
