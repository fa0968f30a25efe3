"""The one exception type for mistakes a user can make and fix.

The CLI turns a UserError into a single line on stderr and exit code 2; anything else is a bug and may
show a traceback. Raise it with a message that names the file, field or flag at fault.
"""


class UserError(Exception):
    """A problem in the user's input (file, field, flag) rather than in flowperf."""
