"""`tunesmith remote` against a real OpenSSH server on 127.0.0.1 (Debian's openssh-server, `make sshd`).

The server is started here with a temporary host key, a temporary user key and a free port; the
client gets a temporary ssh config (IdentityFile, UserKnownHostsFile, Port) through --ssh-config.
The host's virtualenv is built once per session and reused by every test (and asserted to be).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
# A few short steps: one conversation per step, no validation or test split (no eval), so each run is
# mostly the model load.
FAST = [
    "--set",
    "train.batch_size=1",
    "--set",
    "train.packing=none",
    "--set",
    "template.max_length=64",
    "--set",
    "data.validation=null",
    "--set",
    "data.test=null",
]
HOSTILE_FILE = "a b'c\"$(touch SENTINEL);d.jsonl"
HOSTILE_RUN = "x; touch SENTINEL $(touch SENTINEL) `touch SENTINEL` 'q\""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tunesmith-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )


class Server:
    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.host = f"{os.environ.get('USER') or 'root'}@127.0.0.1:{self.port}"
        self.remote_dir = str(root / "remote")
        self.sentinel_dir = root / "cwd"
        self.sentinel_dir.mkdir()
        self.timings: dict[str, float] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if SSHD is None:
        pytest.skip("needs OpenSSH's sshd (Debian: apt-get install openssh-server; `make sshd` does it)")
    import pwd

    root = tmp_path_factory.mktemp("ssh")
    host_key, user_key = root / "host_ed25519", root / "user_ed25519"
    _keygen(host_key)
    _keygen(user_key)
    (root / "authorized_keys").write_text((root / "user_ed25519.pub").read_text())
    srv = Server(root)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    (root / "sshd_config").write_text(f"""Port {srv.port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {root}/sshd.pid
AuthorizedKeysFile {root}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
StrictModes no
UsePAM no
LogLevel ERROR
""")
    user = pwd.getpwuid(os.getuid()).pw_name
    srv.host = f"{user}@127.0.0.1:{srv.port}"
    host_pub = (root / "host_ed25519.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{srv.port} {host_pub[0]} {host_pub[1]}\n")
    (root / "empty_known_hosts").write_text("")
    for name, known in (("ssh_config", "known_hosts"), ("ssh_config_unknown", "empty_known_hosts")):
        (root / name).write_text(f"""Host 127.0.0.1
  IdentityFile {user_key}
  IdentitiesOnly yes
  UserKnownHostsFile {root / known}
  GlobalKnownHostsFile /dev/null
  LogLevel ERROR
""")
    srv.config = root / "ssh_config"
    srv.config_unknown = root / "ssh_config_unknown"
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stderr=subprocess.PIPE)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"sshd did not start: {process.stderr.read().decode()}")
            time.sleep(0.1)
    srv.process = process
    yield srv
    for what, seconds in srv.timings.items():
        print(f"\n{what}: {seconds:.0f} s", file=sys.stderr)
    # teardown: stop every run the tests started on the "host" (by pid, from the job files), then sshd
    for job in Path(srv.remote_dir, "jobs").glob("*/job.json") if Path(srv.remote_dir, "jobs").is_dir() else []:
        pid = json.loads(job.read_text())["pid"]
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    shutil.rmtree(Path(srv.remote_dir, "envs"), ignore_errors=True)  # the host's virtualenv: about 1.5 GB


def cli(srv: Server, *args: str, config=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    verb, rest = args[0], list(args[1:])
    argv = [
        sys.executable,
        "-m",
        "tunesmith",
        "remote",
        verb,
        *rest,
        "--host",
        srv.host,
        "--ssh-config",
        str(config or srv.config),
        "--remote-dir",
        srv.remote_dir,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd or srv.sentinel_dir)


def quickstart() -> str:
    from tunesmith.cli.train import quickstart_config_path

    return str(quickstart_config_path())


def status(srv: Server, name: str) -> dict:
    done = cli(srv, "status", name, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_state(srv: Server, name: str, wanted: set[str], timeout: float = 400) -> dict:
    deadline = time.time() + timeout
    while True:
        state = status(srv, name)
        if state["state"] in wanted or time.time() > deadline:
            return state
        time.sleep(1)


def wait_for(what: str, condition, timeout: float = 300, interval: float = 0.05, why=lambda: ""):
    """Poll `condition` until it holds; the deadline only catches a hang, it orders nothing."""
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{why()}")
        time.sleep(interval)


def job_pid(srv: Server, name: str) -> int:
    """The supervisor's pid: with start_new_session it is also the process group of the whole run."""
    job = Path(srv.remote_dir, "jobs", name, "job.json")
    wait_for(f"{job}", job.is_file)
    return int(json.loads(job.read_text())["pid"])


@contextmanager
def frozen(pgid: int):
    """SIGSTOP the run's process group (supervisor and training) and SIGCONT it on the way out, so
    nothing in the run moves on, however fast the machine, while the test acts on it."""
    os.killpg(pgid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(pgid, signal.SIGCONT)


def logged_steps(metrics: Path) -> list[int]:
    """The training steps in metrics.jsonl's complete lines so far."""
    text = metrics.read_text() if metrics.is_file() else ""
    lines = text[: text.rfind("\n") + 1].splitlines()
    return [record["step"] for record in map(json.loads, filter(None, lines)) if "loss" in record]


@pytest.fixture(scope="module")
def trained(server):
    """One real run of the embedded model through `remote train`, followed to its end. It builds the
    host's virtualenv, and its data file and run name are hostile: quotes, spaces, `$()`, `;`."""
    work = server.sentinel_dir
    bundled = Path(__file__).resolve().parents[2] / "src" / "tunesmith" / "data" / "bundled" / "smart_home"
    (work / HOSTILE_FILE).write_bytes((bundled / "train.jsonl").read_bytes())
    config = work / "hostile $(touch SENTINEL) config.yaml"
    config.write_text(f"data:\n  train: {json.dumps(HOSTILE_FILE)}\n", encoding="utf-8")
    started = time.perf_counter()
    done = cli(
        server, "train", str(config), *FAST, "--set", "train.max_steps=2", "--set", f"name={HOSTILE_RUN}", timeout=1200
    )
    server.timings["first remote train (with environment)"] = time.perf_counter() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_check_reports_python_disk_and_gpus(server):
    done = cli(server, "check", quickstart())
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"python   {sys.version_info.major}." in done.stdout
    assert "GiB free" in done.stdout
    assert "gpu" in done.stdout and "memory" in done.stdout


def test_train_follows_progress_then_logs_and_fetch(server, trained, tmp_path):
    assert "environment: created" in trained.stderr  # the first run builds the host's virtualenv
    assert "[progress] step 2" in trained.stdout  # followed live: the run's log, with its steps
    assert f"{HOSTILE_RUN}: completed" in trained.stderr
    logs = cli(server, "logs", HOSTILE_RUN)
    assert logs.returncode == 0, logs.stderr
    assert "[progress] step 1" in logs.stdout and "exited with code 0" in logs.stdout
    done = cli(server, "fetch", HOSTILE_RUN, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    run = tmp_path / HOSTILE_RUN
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "report.html").is_file()
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert max(m.get("step", 0) for m in metrics) == 2
    assert not (run / "checkpoints").exists()  # stays on the host unless --checkpoints
    assert (tmp_path / f"{HOSTILE_RUN}.remote.log").is_file()


def test_hostile_names_arrive_byte_for_byte_and_execute_nothing(server, trained):
    local = server.sentinel_dir / HOSTILE_FILE
    remote = Path(server.remote_dir, "jobs", HOSTILE_RUN, "data", HOSTILE_FILE)
    assert hashlib.sha256(remote.read_bytes()).hexdigest() == hashlib.sha256(local.read_bytes()).hexdigest()
    assert (Path(server.remote_dir, "runs", HOSTILE_RUN, "manifest.json")).is_file()
    report = json.loads(Path(server.remote_dir, "runs", HOSTILE_RUN, "data_report.json").read_text())
    assert any(HOSTILE_FILE in text for text in _strings(report))  # the host's run names the user's file
    for where in (
        server.sentinel_dir,
        Path.home(),
        Path(server.remote_dir),
        remote.parent.parent,
        Path(server.remote_dir, "runs", HOSTILE_RUN),
    ):
        assert not (where / "SENTINEL").exists(), where


def test_run_survives_killed_client_and_environment_is_reused(server, trained):
    """The client is killed while it follows a run that cannot have ended: the run is frozen (SIGSTOP)
    from its first log line until the client is gone, so no machine is too fast for this test."""
    name, steps = "survivor", 3
    argv = [
        sys.executable,
        "-m",
        "tunesmith",
        "remote",
        "train",
        quickstart(),
        *FAST,
        "--set",
        f"train.max_steps={steps}",
        "--set",
        f"name={name}",
        "--host",
        server.host,
        "--ssh-config",
        str(server.config),
        "--remote-dir",
        server.remote_dir,
    ]
    started = time.perf_counter()
    client = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, cwd=server.sentinel_dir
    )
    shown: list[str] = []  # what the client printed of the run's log, as it comes
    reader = threading.Thread(
        target=lambda: shown.extend(line.decode(errors="replace") for line in client.stdout), daemon=True
    )
    reader.start()
    log = Path(server.remote_dir, "jobs", name, "train.log")
    try:
        wait_for(
            "the run to start",
            lambda: (log.is_file() and "started:" in log.read_text()) or client.poll() is not None,
            why=lambda: "".join(shown)[-2000:],
        )
        assert client.poll() is None, client.stderr.read().decode()
        pid = job_pid(server, name)
        with frozen(pid):
            wait_for(
                "the client to follow the log",
                lambda: any("started:" in line for line in shown) or client.poll() is not None,
                why=lambda: "".join(shown)[-2000:],
            )
            assert not Path(server.remote_dir, "jobs", name, "exit.json").exists()  # the run has not ended
            assert client.poll() is None, "".join(shown)[-2000:]  # the client is following the log through ssh
            os.killpg(client.pid, signal.SIGKILL)  # the local client and its ssh process, without warning
            client.wait()
    finally:
        if client.poll() is None:
            os.killpg(client.pid, signal.SIGKILL)
            client.wait()
    reader.join(timeout=10)
    said = client.stderr.read().decode()
    assert "environment: reused" in said and "environment: created" not in said, said
    assert "creating virtualenv" not in said and "installing torch" not in said  # nothing rebuilt
    state = wait_state(server, name, {"completed", "failed", "lost"})
    server.timings["second remote train (reused environment)"] = time.perf_counter() - started
    assert state["state"] == "completed", state
    assert state["last_metrics"]["step"] == steps


def test_cancel_writes_checkpoint_and_resume_completes(server, trained):
    """SIGTERM reaches a run known to be mid-way: frozen (SIGSTOP) just after it logged step k, sent
    SIGTERM, then let go; it finishes step k+1, checkpoints it and stops."""
    name, steps = "cancel-me", 10
    done = cli(
        server,
        "train",
        quickstart(),
        *FAST,
        "--set",
        f"train.max_steps={steps}",
        "--set",
        f"name={name}",
        "--no-follow",
    )
    assert done.returncode == 0, done.stderr
    metrics = Path(server.remote_dir, "runs", name, "metrics.jsonl")
    pid = job_pid(server, name)
    ended = Path(server.remote_dir, "jobs", name, "exit.json")
    wait_for(
        "a first logged step",
        lambda: bool(logged_steps(metrics)) or ended.exists(),
        why=lambda: cli(server, "logs", name).stdout[-2000:],
    )
    assert not ended.exists(), cli(server, "logs", name).stdout[-2000:]
    with frozen(pid):
        logged = logged_steps(metrics)[-1]  # the run cannot move on while frozen
        assert logged < steps, logged
        done = cli(server, "cancel", name)  # the signal waits, pending, until the run is let go
        assert done.returncode == 0, done.stdout + done.stderr
        assert "sent SIGTERM" in done.stdout, done.stdout
    state = wait_state(server, name, {"stopped", "completed", "failed", "lost"})
    assert (state["state"], state["exit_code"], state["manifest_status"]) == ("stopped", 143, "interrupted"), state
    assert state["checkpoints"], "no checkpoint written on SIGTERM"
    stopped_at = int(state["checkpoints"][-1].split("-")[1])
    assert stopped_at == logged + 1 < steps, (logged, state["checkpoints"])  # the step in progress, then stop
    assert "stopped" in cli(server, "status", name).stdout
    # a host reboot leaves the same: no process, a complete checkpoint; --resume continues from it
    done = cli(server, "train", name, "--resume", timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"{name}: completed" in done.stderr
    assert f"checkpoints: step-{stopped_at}" in done.stderr
    assert logged_steps(metrics)[-1] == steps


def test_unknown_host_key_is_refused_with_fingerprint(server):
    done = cli(server, "check", config=server.config_unknown)
    assert done.returncode == 2, done.stderr
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", str(server.root / "host_ed25519.pub")], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert "not known" in done.stderr and fingerprint in done.stderr
    assert f"ssh-keyscan -p {server.port} 127.0.0.1 >> ~/.ssh/known_hosts" in done.stderr
    assert not Path(server.root / "empty_known_hosts").read_text()  # nothing was learned


def test_host_starting_with_dash_is_refused(server):
    for host in ("-oProxyCommand=touch SENTINEL", "root@127.0.0.1 -oProxyCommand=touch SENTINEL"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tunesmith",
                "remote",
                "check",
                f"--host={host}",
                "--ssh-config",
                str(server.config),
            ],
            capture_output=True,
            text=True,
            cwd=server.sentinel_dir,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
    assert "must not start with '-'" in done.stderr or "whitespace" in done.stderr
    assert not (server.sentinel_dir / "SENTINEL").exists()


def _strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in _strings(key) + _strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []
