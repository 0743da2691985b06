"""The one error type of power_modeling, in a module that imports nothing: the command line catches
it around every command, and must not pay for pandas to do so (``--help``)."""


class DataError(ValueError):
    """Input data that cannot be modelled; the message names the file and what is wrong."""
