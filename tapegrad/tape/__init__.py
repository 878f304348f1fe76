"""The tape: graph -> flat arrays (format), rewrites, plans, printing."""

from tapegrad.tape.format import Tape  # noqa: F401
