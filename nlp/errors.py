"""The project's own error types: bad input, said in one line (the CLI prints it and exits 2).

They live here, apart from the modules that raise them, so that importing them costs nothing: `python -m nlp
--help` and the CLI's error handling need them before (or without) torch and datasets.
"""

import argparse


class CorpusError(Exception):
    """A corpus could not be found, fetched, verified or read; the message says why in one line."""


class CheckpointError(Exception):
    """A checkpoint is missing, damaged or does not fit its config; the message says which and what to do."""


class TokenizerError(Exception):
    """The tokenizer model is missing or unreadable."""


class GenerationError(ValueError):
    """A prompt or decoding setting that cannot be used."""


class ConfigError(ValueError):
    """A model or training setting that cannot be used."""


class TrainingError(Exception):
    """A training run cannot go on (its loss or weights stopped being finite numbers); the message says what was
    kept and what to change."""


class NonFiniteScores(GenerationError):
    """The model's next-token scores hold NaN or infinity (its weights or an input overflowed): nothing sensible
    can be sampled from them."""


class ReplyIndexError(CheckpointError):
    """A chat checkpoint's reply index is missing, damaged or unreadable; the message says how to rebuild it."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (what is wrong, and where the options are listed),
    exit status 2; argparse's own prints the whole usage first, a dozen lines that hide the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (options: {self.prog} --help)\n")
