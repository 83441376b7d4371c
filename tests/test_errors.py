"""Every error the suite raises for bad input or an unusable environment has one base, which the CLI catches."""

import importlib
import inspect

import pytest

from vla_forget.errors import VlaForgetError

MODULES = ["vla_forget.states", "vla_forget.tokenizer", "vla_forget.datasets", "vla_forget.bench", "vla_forget.pretrain",
           "vla_forget.spec", "vla_forget.demos", "vla_forget.registry", "vla_forget.adapt.common",
           "vla_forget.sim_assets", "vla_forget.sweep", "vla_forget.checkpoints", "vla_forget.envs.vulkan",
           "vla_forget.envs.lowpoly", "vla_forget.envs.simpler", "vla_forget.policies.base", "vla_forget.policies",
           "vla_forget.policies.openvla", "vla_forget.training", "vla_forget.runfolder", "vla_forget.bc"]
#: signals caught inside the suite, never shown to a user as such
INTERNAL = {"NonFiniteError", "NoTransportSteps"}


def test_every_user_facing_error_has_the_one_base():
    found = {}
    for name in MODULES:
        mod = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ == mod.__name__ and issubclass(cls, Exception) and cls_name not in INTERNAL:
                found[f"{name}.{cls_name}"] = cls
    assert len(found) >= 20
    missing = [n for n, c in found.items() if not issubclass(c, VlaForgetError)]
    assert not missing, missing


def test_the_cli_says_any_of_them_in_one_line(monkeypatch, capsys):
    from vla_forget import cli
    from vla_forget.envs.lowpoly import LowPolyAssetsError

    def boom(args):
        raise LowPolyAssetsError("the low-poly Panda meshes are missing: restore them")

    monkeypatch.setitem(cli.COMMANDS, "doctor", boom)
    assert cli.main(["doctor"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "vla-forget doctor: error: the low-poly Panda meshes are missing: restore them"
    with pytest.raises(ZeroDivisionError):  # a bug is not dressed up as bad input
        monkeypatch.setitem(cli.COMMANDS, "doctor", lambda args: 1 / 0)
        cli.main(["doctor"])


def test_the_cli_builds_its_parser_without_torch_or_the_simulator():
    """`vla-forget --help`, `ls`, `validate`: the parser of every command is built from light modules."""
    import subprocess
    import sys

    code = ("import sys, vla_forget.cli as c; c.build_parser(); "
            "heavy = [m for m in ('torch', 'mani_skill', 'sapien', 'tensorflow') if m in sys.modules]; "
            "print(heavy); assert not heavy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_bench_options_are_its_config_fields():
    """`vla-forget bench`'s options are generated from BenchConfig: every field but the internal ones is an
    option, each with its field doc as help, and each parses to None when not given (resolve_config fills it)."""
    import dataclasses

    from vla_forget.bench import BENCH_OPTIONS
    from vla_forget.cli import build_parser
    from vla_forget.config import BenchConfig, field_docs

    args = build_parser().parse_args(["bench", "--out", "o"])
    fields = [f.name for f in dataclasses.fields(BenchConfig) if f.name not in BenchConfig.INTERNAL]
    assert all(hasattr(args, name) for name in fields)
    assert all(getattr(args, name) is None for name in fields if name != "out")
    assert set(BENCH_OPTIONS) - {"kl_state_stride"} == set(fields) - {"out", "progress"}
    assert set(field_docs(BenchConfig)) == {f.name for f in dataclasses.fields(BenchConfig)}
    args = build_parser().parse_args(["bench", "--out", "o", "--policy", "a", "--policy", "b", "--greedy",
                                      "--no-progress", "--kl-states", "both"])
    assert args.policies == ["a", "b"] and args.greedy is True and args.progress is False and args.kl_states == "both"


def test_every_commands_help_prints(capsys):
    """`vla-forget CMD --help` for every command (a help text with a bare % once broke argparse's formatting)."""
    import pytest

    from vla_forget.cli import COMMANDS, main

    for cmd in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0, cmd
        assert "usage: vla-forget " + cmd in capsys.readouterr().out
