"""The helper that runs on the remote host: Python 3.8+ standard library only, no tunesmith needed.

One file on purpose, over the 400-line rule: it is sent whole as the text of `python3 -c`, so it
can import nothing of its own.

The local side runs it as `python3 -c <this file's text>` through ssh. The first line of stdin is
a JSON request ({"op": ..., ...}); what follows is the op's payload (file bytes). Ops that answer
write one JSON object to stdout; `logs` and `fetch` stream bytes. A refusal exits with code 3 and
{"error": ...} on stdout. Nothing a user typed is ever part of a command line here: names arrive in
the JSON and are used as paths and argv elements only.

Layout under the base folder (default ~/.tunesmith-remote):
  blobs/<sha256>            uploaded files, by content
  envs/<key>/               virtualenvs, keyed by Python and the dependency set; .tunesmith records
                            the content hash of the tunesmith wheel installed in it
  jobs/<run>/               config.yaml, data/ (the user's file names), train.log, job.json, exit
  runs/<run>/               the run folder `tunesmith train` writes
"""

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

USER_ERROR = 3
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class Refused(Exception):
    pass


def base_dir(request):
    return os.path.abspath(os.path.expanduser(request.get("dir") or "~/.tunesmith-remote"))


def check_name(name):
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") or "\0" in name:
        raise Refused("not a plain run name: %r" % (name,))
    return name


def check_sha(sha):
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise Refused("not a sha256: %r" % (sha,))
    return sha


def job_dir(request):
    return os.path.join(base_dir(request), "jobs", check_name(request["name"]))


def run_dir(request):
    return os.path.join(base_dir(request), "runs", check_name(request["name"]))


def boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def read_json(path, default=None):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return default


def write_json(path, data, mode=0o644):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    os.replace(tmp, path)


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- probe


def op_probe(request, payload):
    base = base_dir(request)
    probe_at = base
    while not os.path.exists(probe_at):
        probe_at = os.path.dirname(probe_at)
    usage = shutil.disk_usage(probe_at)
    gpus, driver, smi_error = [], None, None
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            done = subprocess.run(
                [
                    smi,
                    "--query-gpu=index,name,driver_version,memory.total,memory.free",
                    "--format=csv,noheader,nounits",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if done.returncode == 0:
                for line in done.stdout.splitlines():
                    parts = [p.strip() for p in line.split(",")]
                    if len(parts) == 5:
                        driver = parts[2]
                        gpus.append(
                            {
                                "index": int(parts[0]),
                                "name": parts[1],
                                "total_mib": float(parts[3]),
                                "free_mib": float(parts[4]),
                            }
                        )
            else:
                smi_error = (done.stderr or done.stdout).strip()[-300:]
        except (OSError, subprocess.TimeoutExpired) as err:
            smi_error = str(err)
    return {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "base": base,
        "free_disk_bytes": usage.free,
        "gpus": gpus,
        "driver": driver,
        "nvidia_smi": smi,
        "nvidia_smi_error": smi_error,
        "platform": sys.platform,
        "boot_id": boot_id(),
    }


# ---------------------------------------------------------------- blobs


def op_missing(request, payload):
    blobs = os.path.join(base_dir(request), "blobs")
    return {"missing": [sha for sha in request["hashes"] if not os.path.isfile(os.path.join(blobs, check_sha(sha)))]}


def op_put(request, payload):
    """Payload: the files' bytes one after another, in the order and sizes of request["files"]."""
    blobs = os.path.join(base_dir(request), "blobs")
    os.makedirs(blobs, exist_ok=True)
    stored = 0
    for item in request["files"]:
        sha, size = check_sha(item["sha"]), int(item["size"])
        tmp = os.path.join(blobs, ".%s.%d.tmp" % (sha, os.getpid()))
        digest, left = hashlib.sha256(), size
        with open(tmp, "wb") as out:
            while left:
                block = payload.read(min(left, 1 << 20))
                if not block:
                    raise Refused("upload ended early")
                digest.update(block)
                out.write(block)
                left -= len(block)
        if digest.hexdigest() != sha:
            os.unlink(tmp)
            raise Refused("upload damaged: sha256 mismatch for %s" % sha)
        os.replace(tmp, os.path.join(blobs, sha))
        stored += size
    return {"stored_bytes": stored}


def op_hash(request, payload):
    """sha256 of files under a job folder (what the tests use to show bytes arrived intact)."""
    root = job_dir(request)
    return {"hashes": {rel: sha256_file(os.path.join(root, rel)) for rel in request["paths"]}}


# ---------------------------------------------------------------- environment


def op_env(request, payload):
    """Create or reuse a virtualenv with torch and the tunesmith wheel; pip's output goes to stderr."""
    base = base_dir(request)
    env = os.path.join(base, "envs", check_name(request["key"]))
    os.makedirs(os.path.dirname(env), exist_ok=True)
    with open(env + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = os.path.join(env, ".tunesmith")
        state = read_json(marker, {})
        python = os.path.join(env, "bin", "python")
        created = installed = False
        if not state.get("deps_ready"):
            shutil.rmtree(env, ignore_errors=True)
            log("creating virtualenv %s" % env)
            run_checked([sys.executable, "-m", "venv", env])
            # --no-compile: no .pyc for all of torch now; Python compiles what a run imports, once
            pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-compile"]
            cuda = gpu_answers()
            torch = request["torch_version"]
            if cuda:
                log("nvidia-smi answers: installing torch %s (CUDA build)" % torch)
                run_checked(pip + ["torch==" + torch])
            else:
                log("no CUDA GPU: installing torch %s (CPU build)" % torch)
                if subprocess.call(pip + ["torch==%s+cpu" % torch], stdout=sys.stderr) != 0:
                    run_checked(
                        pip
                        + [
                            "torch==%s+cpu" % torch,
                            "--index-url",
                            TORCH_CPU_INDEX,
                            "--extra-index-url",
                            "https://pypi.org/simple",
                        ]
                    )
            log("installing tunesmith's dependencies")
            run_checked(pip + [wheel_path(base, request)])  # finds torch already there: no CUDA pull on a CPU host
            state = {"deps_ready": True, "wheel_content": request["wheel_content"], "cuda": cuda}
            write_json(marker, state)
            created = installed = True
        elif state.get("wheel_content") != request["wheel_content"]:
            log("updating tunesmith in %s" % env)
            run_checked(
                [
                    python,
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-deps",
                    "--force-reinstall",
                    wheel_path(base, request),
                ]
            )
            state["wheel_content"] = request["wheel_content"]
            write_json(marker, state)
            installed = True
    return {"env": env, "python": python, "created": created, "installed": installed, "cuda": state.get("cuda")}


def wheel_path(base, request):
    """pip wants a wheel's own file name: link the blob under it."""
    folder = os.path.join(base, "wheels", request["wheel_sha"])
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, os.path.basename(request["wheel_name"]))
    if not os.path.exists(path):
        place(os.path.join(base, "blobs", check_sha(request["wheel_sha"])), path)
    return path


def gpu_answers():
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        return subprocess.call([smi, "-L"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60) == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_checked(argv):
    code = subprocess.call(argv, stdout=sys.stderr)
    if code != 0:
        raise Refused("failed (exit %d): %s" % (code, " ".join(argv)))


def log(text):
    sys.stderr.write("[remote] %s\n" % text)
    sys.stderr.flush()


def place(source, target):
    """Hard-link a blob to its name (no copy), or copy where links are not possible."""
    tmp = target + ".tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


# ---------------------------------------------------------------- jobs


def job_state(request):
    """running / completed / stopped / failed / lost / unknown, from the job's files and its process."""
    jobs, runs = job_dir(request), run_dir(request)
    job = read_json(os.path.join(jobs, "job.json"), None)
    manifest = read_json(os.path.join(runs, "manifest.json"), None)
    exit_info = read_json(os.path.join(jobs, "exit.json"), None)
    state = {
        "name": request["name"],
        "job_dir": jobs,
        "run_dir": runs,
        "exists": job is not None,
        "manifest_status": (manifest or {}).get("status"),
        "pid": (job or {}).get("pid"),
    }
    if job is None:
        state["state"] = "unknown"
        return state
    if exit_info is None and alive(job):
        state["state"] = "running"
    elif exit_info is not None:
        code = exit_info.get("exit_code")
        state["exit_code"] = code
        state["state"] = {0: "completed", 143: "stopped", 130: "stopped"}.get(code, "failed")
    else:
        state["state"] = "lost"  # no exit recorded and no process: the host rebooted or it was killed
    state["checkpoints"] = (
        sorted(
            (n for n in os.listdir(os.path.join(runs, "checkpoints")) if n.startswith("step-")),
            key=lambda n: int(n.split("-")[1]) if n.split("-")[1].isdigit() else -1,
        )
        if os.path.isdir(os.path.join(runs, "checkpoints"))
        else []
    )
    state["last_metrics"] = last_metrics(os.path.join(runs, "metrics.jsonl"))
    return state


def alive(job):
    if job.get("boot_id") != boot_id():
        return False
    try:
        os.kill(int(job["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return False
    try:  # the pid may have been reused: check it is still our supervisor
        with open("/proc/%d/cmdline" % int(job["pid"]), "rb") as handle:
            return job["token"].encode() in handle.read()
    except OSError:
        return True


def last_metrics(path):
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            lines = [line for line in handle.read().splitlines() if line.strip()]
        return json.loads(lines[-1].decode("utf-8")) if lines else None
    except (OSError, ValueError):
        return None


def op_stage(request, payload):
    """Place the run's inputs: config.yaml and the data files under their own names, from blobs."""
    base, jobs = base_dir(request), job_dir(request)
    state = job_state(request)
    if state["state"] == "running":
        raise Refused("run %r is already running on this host (pid %s)" % (request["name"], state["pid"]))
    if os.path.exists(run_dir(request)):
        raise Refused(
            "run %r already exists on this host (%s); choose another name (--set name=...) "
            "or continue it with --resume" % (request["name"], run_dir(request))
        )
    shutil.rmtree(jobs, ignore_errors=True)
    os.makedirs(jobs)
    for item in request["files"]:
        rel = item["path"]
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
            raise Refused("not a relative path: %r" % (rel,))
        target = os.path.join(jobs, *parts)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        place(os.path.join(base, "blobs", check_sha(item["sha"])), target)
    with open(os.path.join(jobs, "config.yaml"), "w", encoding="utf-8") as handle:
        handle.write(request["config_yaml"])
    return {"job_dir": jobs}


def op_start(request, payload):
    """Start `tunesmith train` detached: its own session (setsid), stdin from /dev/null, output to
    train.log, SIGHUP ignored; a supervisor process records its exit code in exit.json."""
    jobs = job_dir(request)
    state = job_state(request)
    if state["state"] == "running":
        raise Refused("run %r is already running on this host (pid %s)" % (request["name"], state["pid"]))
    if not os.path.isdir(jobs):
        raise Refused("no run %r on this host" % request["name"])
    secrets = request.get("env") or {}
    secrets_path = os.path.join(jobs, "env.json")
    if secrets or not os.path.exists(secrets_path):
        write_json(secrets_path, secrets, mode=0o600)  # tokens: a 0600 file, never a command line
        os.chmod(secrets_path, 0o600)
    if os.path.exists(os.path.join(jobs, "exit.json")):
        os.unlink(os.path.join(jobs, "exit.json"))
    token = "tunesmith-job-%s-%d" % (hashlib.sha256(jobs.encode()).hexdigest()[:16], int(time.time()))
    supervisor = os.path.join(jobs, "supervisor.py")
    with open(supervisor, "w", encoding="utf-8") as handle:
        handle.write(request["agent"])  # this helper's own text: the detached supervisor runs it
    spec = {
        "argv": request["argv"],
        "cwd": jobs,
        "log": os.path.join(jobs, "train.log"),
        "metrics": os.path.join(run_dir(request), "metrics.jsonl"),
        "exit": os.path.join(jobs, "exit.json"),
        "env_file": secrets_path,
    }
    write_json(os.path.join(jobs, "spec.json"), spec)
    with open(os.devnull, "rb") as devnull:
        process = subprocess.Popen(
            [sys.executable, supervisor, "supervise", jobs, token],
            stdin=devnull,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=jobs,
            start_new_session=True,
            close_fds=True,
        )
    job = {"pid": process.pid, "token": token, "boot_id": boot_id(), "started": time.time(), "argv": request["argv"]}
    write_json(os.path.join(jobs, "job.json"), job)
    return {"pid": process.pid, "job_dir": jobs, "log": spec["log"]}


def supervise(jobs):
    """The detached process: run the training, wait, write its exit code."""
    spec = read_json(os.path.join(jobs, "spec.json"))
    env = dict(os.environ)
    env.update(read_json(spec["env_file"], {}) or {})
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited through exec: nohup
    signal.signal(signal.SIGTERM, lambda *_: None)  # a cancel reaches the whole group; outlive the child
    signal.signal(signal.SIGINT, lambda *_: None)
    with open(spec["log"], "ab") as out, open(os.devnull, "rb") as devnull:
        out.write(
            ("\n[remote] %s started: %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), " ".join(spec["argv"]))).encode(
                "utf-8", "replace"
            )
        )
        out.flush()
        try:
            child = subprocess.Popen(
                spec["argv"], stdin=devnull, stdout=out, stderr=subprocess.STDOUT, cwd=spec["cwd"], env=env
            )
            metrics = spec["metrics"]
            seen = os.path.getsize(metrics) if os.path.isfile(metrics) else 0  # a resumed run: only new steps
            while True:
                try:
                    code = child.wait(timeout=2)
                    break
                except subprocess.TimeoutExpired:
                    seen = report_progress(metrics, seen, out)
                except InterruptedError:
                    continue
            report_progress(metrics, seen, out)
        except OSError as err:
            out.write(("[remote] could not start: %s\n" % err).encode("utf-8", "replace"))
            code = 127
        if code < 0:
            code = 128 - code
        out.write(("[remote] %s exited with code %d\n" % (time.strftime("%Y-%m-%d %H:%M:%S"), code)).encode())
    write_json(spec["exit"], {"exit_code": code, "finished": time.time()})


def report_progress(metrics, seen, out):
    """Append a line per new metrics.jsonl record to the log: the run's progress, readable in any log
    viewer (the run's own progress bar is drawn only on a terminal)."""
    try:
        with open(metrics, "rb") as handle:
            handle.seek(seen)
            block = handle.read()
    except OSError:
        return seen
    complete = block[: block.rfind(b"\n") + 1]
    for line in complete.splitlines():
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:
            continue
        parts = ["step %s" % record.get("step")]
        for key, fmt in (
            ("loss", "loss %.4f"),
            ("eval_loss", "eval loss %.4f"),
            ("lr", "lr %.3g"),
            ("tokens_per_s", "%.0f tok/s"),
            ("elapsed_s", "%.0f s"),
        ):
            if isinstance(record.get(key), (int, float)):
                parts.append(fmt % record[key])
        out.write(("[progress] %s\n" % ", ".join(parts)).encode("utf-8"))
    out.flush()
    return seen + len(complete)


def op_status(request, payload):
    return job_state(request)


def op_cancel(request, payload):
    state = job_state(request)
    if state["state"] != "running":
        return {"signalled": False, "state": state}
    job = read_json(os.path.join(job_dir(request), "job.json"))
    try:
        os.killpg(int(job["pid"]), signal.SIGTERM)  # the supervisor's session: training and its workers
    except ProcessLookupError:
        return {"signalled": False, "state": job_state(request)}
    return {"signalled": True, "pid": job["pid"]}


def op_logs(request, payload):
    """Stream train.log from `offset`; with follow, until the job has ended and all is read."""
    path = os.path.join(job_dir(request), "train.log")
    if read_json(os.path.join(job_dir(request), "job.json")) is None:
        raise Refused("no run %r on this host" % request["name"])
    out = sys.stdout.buffer
    out.write(b"LOG\n")  # what follows is the log (a refusal is JSON instead)
    parent = os.getppid()
    offset = int(request.get("offset") or 0)
    while True:
        ended = job_state(request)["state"] != "running"
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                block = handle.read()
        except OSError:
            block = b""
        if block:
            offset += len(block)
            out.write(block)
            out.flush()
        if not request.get("follow") or (ended and not block):
            return None
        if os.getppid() != parent:  # ssh went away: stop watching, the run goes on
            return None
        time.sleep(0.5)


def op_fetch(request, payload):
    """The run folder as a tar stream on stdout (checkpoints only when asked), plus the job's log."""
    runs = run_dir(request)
    if not os.path.isdir(runs):
        raise Refused("no run folder %r on this host" % request["name"])
    with_checkpoints = bool(request.get("checkpoints"))

    def keep(info):
        parts = info.name.split("/")
        if not with_checkpoints and len(parts) > 1 and parts[1] == "checkpoints":
            return None
        return info

    sys.stdout.buffer.write(b"TAR\n")  # what follows is the tar stream (a refusal is JSON instead)
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as tar:
        tar.add(runs, arcname=request["name"], filter=keep)
        log_path = os.path.join(job_dir(request), "train.log")
        if os.path.isfile(log_path):
            tar.add(log_path, arcname=request["name"] + ".remote.log")
    return None


OPS = {
    "probe": op_probe,
    "missing": op_missing,
    "put": op_put,
    "hash": op_hash,
    "env": op_env,
    "stage": op_stage,
    "start": op_start,
    "status": op_status,
    "cancel": op_cancel,
    "logs": op_logs,
    "fetch": op_fetch,
}


def main(argv):
    if len(argv) >= 3 and argv[0] == "supervise":
        supervise(argv[1])
        return 0
    stdin = sys.stdin.buffer
    request = json.loads(stdin.readline().decode("utf-8"))
    try:
        answer = OPS[request["op"]](request, stdin)
    except Refused as err:
        sys.stdout.write(json.dumps({"error": str(err)}) + "\n")
        return USER_ERROR
    except BrokenPipeError:
        return 0
    if answer is not None:
        sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
