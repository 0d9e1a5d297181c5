"""The ``hdml-tf`` command line: what a user sees first."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

import hdml_tf_entry
from hdml_tf import cli
from hdml_tf.tf_startup import STARTUP_NOISE
from tests.test_export import REPO

# One fragment of each TensorFlow start-up line (TF 2.21, CPU-only machine).
STARTUP_LINES = ("All log messages before absl::InitializeLog()",
                 "oneDNN custom operations are on", "Could not find cuda drivers",
                 "cpu_feature_guard", "To enable the following instructions",
                 "failed call to cuInit")


def user_env(**env):
    """The user's environment: none of the test run's TensorFlow settings."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("TF_CPP_MIN_LOG_LEVEL", "HDML_TF_VERBOSE")}
    return dict(base, **env)


def run_cli(*args, module="hdml_tf_entry", **env):
    # The installed `hdml-tf` command runs hdml_tf_entry.main; `python -m hdml_tf` too.
    result = subprocess.run([sys.executable, "-m", module, *args],
                            capture_output=True, text=True, cwd=REPO,
                            env=user_env(**env), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("args", [("presets",), ("export", "--help")])
def test_commands_print_no_tensorflow_startup_logs(args):
    """Every command imports TensorFlow (the verbose test below shows the lines it
    prints); the entry point keeps them off the output."""
    result = run_cli(*args)
    assert result.stdout.strip()
    found = [line for line in STARTUP_LINES if line in result.stderr]
    assert not found, result.stderr


def test_python_m_hdml_tf_prints_no_tensorflow_startup_logs():
    """``python -m hdml_tf`` imports the package before the entry point runs: the
    package's own import keeps the lines off."""
    result = run_cli("--help", module="hdml_tf")
    assert "usage: hdml-tf" in result.stdout
    found = [line for line in STARTUP_LINES if line in result.stderr]
    assert not found, result.stderr


@pytest.mark.parametrize("how", ["env", "flag"])
def test_verbose_brings_the_startup_logs_back(how):
    args = ("--verbose", "export", "--help") if how == "flag" else ("export", "--help")
    result = run_cli(*args, **({"HDML_TF_VERBOSE": "1"} if how == "env" else {}))
    assert "--checkpoint" in result.stdout
    assert any(line in result.stderr for line in STARTUP_LINES), result.stderr


def test_only_startup_noise_is_filtered():
    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written "
        "to STDERR\n",
        "I0000 00:00:1796044959.713298    6210 port.cc:153] oneDNN custom operations "
        "are on.\n",
        "W0000 00:00:1796044959.713774    6210 cudart_stub.cc:31] Could not find cuda\n",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild "
        "TensorFlow with the appropriate compiler flags.\n",
        "E0000 00:00:1796160999.846527    7731 cuda_platform.cc:52] failed call to cuInit: "
        "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n",
    ]
    kept = [
        "E0000 00:00:1796044959.713774    6210 cuda_dnn.cc:8579] Unable to register\n",
        "F0000 00:00:1796044959.713774    6210 some.cc:1] Check failed\n",
        "Traceback (most recent call last):\n",
        "ImportError: libcudart.so.12: cannot open shared object file\n",
    ]
    assert all(STARTUP_NOISE.match(line) for line in noise)
    assert not any(STARTUP_NOISE.match(line) for line in kept)


def test_argparse_only_in_cli():
    """Every sub-command's parser is built in hdml_tf/cli.py."""
    package = pathlib.Path(cli.__file__).parent
    uses = re.compile(r"^\s*(import argparse|from argparse import)", re.M)
    users = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                   if uses.search(p.read_text(encoding="utf-8")))
    assert users == ["cli.py"]


def test_every_command_has_a_parser_and_help(capsys):
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            cli.main([*name.split(), "--help"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: hdml-tf {name} ")
    assert cli.main(["weights"]) == 2
    assert "hdml-tf weights import FILE" in capsys.readouterr().err
    assert cli.main(["no-such-command"]) == 2


@pytest.mark.parametrize("args", [("presets", "no_such_preset"),
                                  ("train", "--config", "no_such_preset", "--workdir", "x")])
def test_an_unknown_preset_is_one_line_naming_it(args, capsys):
    from hdml_tf import cli

    assert cli.main(list(args)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "'no_such_preset'" in lines[0], captured.err
    assert "Traceback" not in captured.err


def test_entry_point_is_the_console_script_and_python_m_hdml_tf():
    """pyproject's `hdml-tf` and `python -m hdml_tf` both run hdml_tf_entry.main (which
    turns ``--verbose`` into HDML_TF_VERBOSE before the package is imported); no library
    module imports the command line."""
    pyproject = (pathlib.Path(REPO) / "pyproject.toml").read_text()
    assert 'hdml-tf = "hdml_tf_entry:main"' in pyproject
    main = (pathlib.Path(REPO) / "hdml_tf" / "__main__.py").read_text()
    assert "hdml_tf_entry.main()" in main
    assert hdml_tf_entry.main is not cli.main
