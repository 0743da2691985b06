"""What the project's three command lines share: one-line user errors and ``--config`` files.

A user error (``sd_energy_contract.errors.InputError``, or click's own usage errors) is one line,
``error: --option VALUE: what is wrong``, exit code 2, no traceback.
``--config FILE.yaml`` fills click's ``default_map``, so the command line beats the file and the
file beats the defaults; an unknown key is an error that suggests the close match.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import click
import yaml

from sd_energy_contract.errors import InputError


def run_cli(command: click.Command, args: list[str] | None = None, prog_name: str | None = None) -> int:
    """Invoke ``command`` and turn every click usage error into one line on stderr, exit 2."""
    try:
        rv = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        return 130
    except (click.ClickException, InputError) as exc:
        click.echo(f"error: {exc.format_message()}".replace("\n", " "), err=True)
        return 2
    return rv if isinstance(rv, int) else 0


def _param_names(command: click.Command) -> dict[str, str]:
    """Config keys accepted: option names with dashes or underscores -> click's param name."""
    names = {}
    for p in command.params:
        if isinstance(p, click.Option) and p.name != "config":
            names[p.name] = p.name
            for opt in p.opts:
                names[opt.lstrip("-")] = p.name
    return names


def load_config_file(path: str, command: click.Command) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise InputError("--config", path, f"cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InputError("--config", path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError("--config", path, "must be a mapping of option: value")
    names = _param_names(command)
    out = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError("--config", path, f"unknown key {key!r}{hint}")
        out[names[key]] = value
    return out


def config_option(f):
    """``--config FILE.yaml``: eager, so its values become defaults before other options parse."""

    def callback(ctx: click.Context, param, value):
        if value:
            ctx.default_map = {**(ctx.default_map or {}), **load_config_file(value, ctx.command)}
        return value

    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
                        callback=callback, help="YAML file of option values (the command line wins).")(f)
