"""The error type for input a user can fix."""


class InputError(ValueError):
  """A config value, file, flag or data set that cannot be used; the message names it and says
  what to change. The `pretrax` command prints these in one line; any other exception is a bug
  and keeps its traceback."""
