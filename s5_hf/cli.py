"""The one flag style of every s5 command: snake_case long options (`--output_dir`, as the transformers scripts and
`HfArgumentParser`), with the kebab-case spelling (`--output-dir`) still accepted so that older command lines work.
Help and errors show only snake_case."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` that reads `--some-option[=value]` as `--some_option[=value]` when only the
    snake_case spelling is an option of this parser (`add_subparsers` makes sub-parsers of this class too)."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace=None):
        import sys

        args = list(sys.argv[1:] if args is None else args)
        end = args.index("--") if "--" in args else len(args)  # what follows "--" is never an option
        return super().parse_known_args([self._snake_case(token) for token in args[:end]] + args[end:], namespace)

    def _snake_case(self, token: str) -> str:
        if not token.startswith("--") or token == "--":
            return token
        name, equals, value = token.partition("=")
        snake = "--" + name[2:].replace("-", "_")
        if name in self._option_string_actions or snake not in self._option_string_actions:
            return token
        return snake + equals + value


__all__ = ["ArgumentParser"]
