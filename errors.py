"""The errors a user can fix, in one place that every module imports without a cycle.

The command line prints such an error's message as one line and exits with status 1, so each
message says what went wrong and what to do next. encoder.py imports nothing of the project: its
own `VocabularyError` is turned into a GPT2Error by utils.py, which loads the vocabulary.
"""


class GPT2Error(Exception):
    """A problem the user can fix: the message is one line that says what to do next."""


class ContextError(GPT2Error, ValueError):
    """The prompt and the tokens to generate do not fit the model's context."""


class UsageError(GPT2Error):
    """An option's value that only the model can rule out (e.g. --context_keep >= n_ctx): exit status 2."""

