"""The one exception type for mistakes a user can make and fix, and every exit code a command ends with.

The CLI turns a UserError into a single line on stderr and exit code 2; anything else is a bug and may
show a traceback. Raise it with a message that names the file, field or flag at fault.
"""

EXIT_OK = 0
EXIT_REGRESSION = 1  # bench compare / bench ab: a gated metric regressed
EXIT_ENGINE_FAILED = 1  # the engine could not start or died
EXIT_USER_ERROR = 2  # a UserError or a flag that does not parse: nothing was written
EXIT_SOME_FAILED = 3  # the run ended, and some workflows failed (or it did not complete)
EXIT_INTERRUPTED = 130  # SIGINT / SIGTERM: one line, the directory consistent on disk


class UserError(Exception):
    """A problem in the user's input (file, field, flag) rather than in flowperf."""
