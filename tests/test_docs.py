"""The README and docs say what the code does: option defaults, commands and the Python example.

Fast and offline: commands are parsed by the CLI's own click objects (not run; the README's quick-start
block is run on the real model by ``test_readme.py``), make targets and pip extras are looked up in the
Makefile and pyproject, and the Python block runs against a stubbed job.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest

from prunenet.cli import main
from prunenet.cli.export import command as export_command

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS_WITH_COMMANDS = [README, ROOT / "docs" / "usage.md"]
NOT_IN_TABLE = {"help", "quiet", "verbose"}
"""Options every command shares (``-h``, ``-q``, ``-v``); the README's table is of export's own."""


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


def _option_table() -> dict[str, str]:
    """``--option`` -> its default cell, from the README's ``prunenet-export`` options table."""
    text = README.read_text()
    section = text[text.index("## `prunenet-export` options"):]
    rows = re.findall(r"^\| `(--[a-z-]+)` \| ([^|]*) \|", section, flags=re.M)
    return {name: cell.strip() for name, cell in rows}


def _readme_value(cell: str, param: click.Parameter):
    """The value a default cell states, in the parameter's type."""
    if cell == "—":
        return None
    if cell in ("off", "on"):
        return cell == "on"
    value = cell.strip("`")
    if isinstance(param.type, click.types.IntParamType | click.IntRange):
        return int(value)
    if isinstance(param.type, click.types.FloatParamType | click.FloatRange):
        return float(value)
    return value


def test_readme_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, len(lines)
    head = "\n".join(lines[:30])
    assert "make run" in head and "make test" in head


def test_readme_option_table_matches_the_cli():
    table = _option_table()
    defaults = export_command.make_context("prunenet-export", ["--ratio", "0.3"]).params
    params = {p.opts[0]: p for p in export_command.params if p.name not in NOT_IN_TABLE}
    assert set(table) == set(params), set(table) ^ set(params)
    for name, cell in table.items():
        param = params[name]
        if param.required:
            assert cell == "required", name
        elif name == "--model":  # None means the default model, which the table names
            from prunenet.source.resolve import DEFAULT_MODEL

            assert param.default is None and cell == DEFAULT_MODEL
        elif name == "--heal":  # None means: heal sources up to AUTO_MAX_PARAMS
            from prunenet.healing.config import AUTO_MAX_PARAMS

            assert param.default is None and cell == f"on up to {AUTO_MAX_PARAMS / 1e6:.0f}M parameters"
        elif name == "--quant-tune-steps":  # None means: TuneConfig.steps for w4a16 up to AUTO_MAX_PARAMS
            from prunenet.healing.config import AUTO_MAX_PARAMS
            from prunenet.quantization.tune_config import TuneConfig

            assert param.default is None
            assert cell == f"`{TuneConfig.steps}` for w4a16 up to {AUTO_MAX_PARAMS / 1e6:.0f}M parameters"
        elif param.multiple:
            assert cell == "—" and defaults[param.name] == (), name
        else:
            default = defaults[param.name]
            default = str(default) if isinstance(default, Path) else default
            assert _readme_value(cell, param) == default, (name, cell, param.default)


def _check_line(line: str) -> None:
    args = shlex.split(line)
    word = args[0]
    if word == "prunenet-export":
        export_command.make_context("prunenet-export", args[1:], resilient_parsing=False)
    elif word == "prunenet":
        sub = main.get_command(click.Context(main), args[1])
        assert sub is not None, line
        sub.make_context(f"prunenet {args[1]}", args[2:], resilient_parsing=False)
    elif word == "make":
        targets = re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert set(args[1:]) <= set(targets), line
    elif word == "pip":
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for arg in args[2:]:
            if arg.startswith(".["):
                wanted = re.search(r"\[(.*)\]", arg).group(1).split(",")
                assert set(wanted) <= set(extras), line
    elif word == "python":
        if args[1] == "-m":
            assert args[2] == "venv", line
        else:
            assert (ROOT / args[1]).is_file(), line
    elif word == "vllm":
        assert args[1] == "serve" and args[2] in ("./out", "out"), line  # what the quick-start writes
    else:
        raise AssertionError(f"a documented command no test checks: {line}")


@pytest.mark.parametrize("doc", DOCS_WITH_COMMANDS, ids=lambda p: p.name)
def test_every_documented_command_parses(doc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()  # what the quick-start's export writes, for the commands that read it
    lines = [line.split(" #", 1)[0].strip() for block in _blocks(doc, "bash") for line in block.splitlines()]
    commands = [part.strip() for line in lines if line for part in re.split(r"&&|\|\|", line)]
    assert commands
    for cmd in commands:
        if cmd.startswith(". "):  # `. .venv/bin/activate`
            continue
        _check_line(cmd)


def test_readme_python_example_runs_against_the_job(monkeypatch):
    """The documented call builds the job's request as the CLI would; the job itself is stubbed."""
    from prunenet.jobs import export_job

    seen = {}

    def fake_run(req, cfg):
        seen.update(req=req, cfg=cfg)
        return {"widths": [1, 2], "quality": {"kl": 0.5}, "stats": {"param_reduction": 0.1}}

    monkeypatch.setattr(export_job, "run_export", fake_run)
    (block,) = _blocks(README, "python")
    exec(compile(block, "README.md", "exec"), {"print": lambda *a, **k: None})
    assert seen["cfg"].ratio == 0.3 and seen["req"].target == "vllm" and seen["req"].force


def test_api_refuses_an_unknown_option():
    import prunenet
    from prunenet.errors import PruneNetError

    with pytest.raises(PruneNetError, match="unknown option.*heal_step"):
        prunenet.export(ratio=0.3, heal_step=5)
