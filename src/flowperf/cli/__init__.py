"""The command line: parses flags, calls one function of another package, prints."""
