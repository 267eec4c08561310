from pathlib import Path

from billing.cli import PROCESSES, build_parser


def test_procfile_lists_exactly_the_processes_billing_up_runs():
    procfile = Path(__file__).resolve().parents[2] / "Procfile"
    lines = [line.split(":", 1) for line in procfile.read_text().splitlines() if line.strip()]
    assert {name.strip(): cmd.strip() for name, cmd in lines} == PROCESSES


def test_parser_knows_the_commands():
    parser = build_parser()
    assert parser.parse_args(["serve", "payments", "--port", "9"]).port == 9
    assert parser.parse_args(["up"]).command == "up"


def test_billing_up_runs_the_procfile_lines_with_its_own_interpreter():
    import sys

    from billing.cli import with_this_python
    assert with_this_python("billing worker payments --metrics-port 9102") == (
        f"{sys.executable} -m billing worker payments --metrics-port 9102")
