"""s5_hf.cli: one flag style (snake_case) for every command, kebab-case still read; help shows only snake_case."""

import pytest

from s5_hf.cli import ArgumentParser


def parser():
    p = ArgumentParser(prog="demo")
    p.add_argument("--output_dir")
    p.add_argument("--dry_run", action="store_true")
    p.add_argument("--no-progress", action="store_true")  # a kebab-case option of its own is left alone
    return p


@pytest.mark.parametrize("argv", [["--output_dir", "x", "--dry_run"], ["--output-dir", "x", "--dry-run"],
                                  ["--output-dir=x", "--dry-run"]])
def test_both_spellings_parse_to_the_snake_case_option(argv):
    args = parser().parse_args(argv)
    assert args.output_dir == "x" and args.dry_run


def test_values_and_arguments_after_the_separator_are_not_rewritten():
    p = ArgumentParser(prog="demo")
    p.add_argument("--name")
    p.add_argument("rest", nargs="*")
    args = p.parse_args(["--name=--not-an-option", "--", "--output-dir"])
    assert args.name == "--not-an-option" and args.rest == ["--output-dir"]
    assert parser().parse_args(["--no-progress"]).no_progress


def test_unknown_options_are_still_errors_and_help_shows_snake_case(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["--output-folder", "x"])
    assert "unrecognized arguments: --output-folder" in capsys.readouterr().err
    assert "--output_dir" in parser().format_help() and "--output-dir" not in parser().format_help()


@pytest.mark.parametrize("module", ["s5_hf.inference.cli", "s5_hf.hub.publish", "s5_hf.convert_official",
                                    "s5_hf.hub.params", "s5_hf.hub.cards", "s5_hf.detection.scene",
                                    "s5_hf.inference.export", "s5_hf.quickstart"])
def test_every_command_documents_only_snake_case_flags(module, capsys):
    import importlib
    import re

    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(["--help"])
    help_text = capsys.readouterr().out
    assert exit_.value.code == 0 and "usage:" in help_text
    assert not re.findall(r"(?<![\w-])--[a-z]+-[a-z-]+", help_text.replace("--no-", "--no_"))
