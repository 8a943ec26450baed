class SoftpromptError(Exception):
    """A problem with the user's input: the message names the file/line and the fix."""
