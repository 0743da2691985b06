"""One type for a user's bad input, free of any command-line library.

Library code (the window API, ``sweep()``, the app's ``check_inputs``) raises ``InputError``
naming the option or argument and the value; each command line prints ``error: <line>`` and
exits with code 2, with no traceback and nothing written.
"""

from __future__ import annotations


class InputError(ValueError):
    exit_code = 2

    def __init__(self, option: str, value: object, problem: str):
        self.option, self.value, self.problem = option, value, problem
        super().__init__(f"{option} {value}: {problem}" if value is not None else f"{option}: {problem}")

    def format_message(self) -> str:  # the name click's exceptions use, so CLIs treat both alike
        return str(self)
