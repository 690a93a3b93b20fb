"""rayprop's exit codes (README, "Exit codes"): rayprop.py maps each kind of error to
one of them, and a command returns one of its own only where the run ended well but
not wholly (`train` whose tracking store missed some points, `ui`, `submit`)."""

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_STOPPED = 0, 1, 2, 130
EXIT_UNDELIVERED = 3  # trained and the files written, but the tracking store did not get everything
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE: what a shell reports for `cat` when `| head` stops reading
