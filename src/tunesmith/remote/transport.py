"""Talk to the remote helper through the system `ssh`: JSON requests on stdin, files by sha256.

Every remote command is the same fixed argv, `python3 -c <agent.py>`, shell-quoted with shlex; what
varies (names, paths, tokens) is JSON on the connection's stdin. Files go up as bytes after the
request, verified by sha256 on arrival and stored once per content; run folders come back as a
tar stream extracted with tarfile's "data" filter (no absolute paths, no links out, no devices).
"""

from __future__ import annotations

import json
import subprocess
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tunesmith.errors import TunesmithError, UserError
from tunesmith.remote.host import SshSettings
from tunesmith.runfolder import sha256_file

AGENT_PATH = Path(__file__).with_name("agent.py")
REFUSED = 3  # the agent's exit code for "your request cannot be done" (a UserError here)
SSH_FAILED = 255


def agent_source() -> str:
    return AGENT_PATH.read_text(encoding="utf-8")


@dataclass
class Remote:
    """One host and one base folder on it."""

    ssh: SshSettings
    base: str | None = None  # None: the agent's default, ~/.tunesmith-remote
    python: str = "python3"
    _hashes: dict[tuple[str, int, int], str] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ plumbing

    def argv(self) -> list[str]:
        return self.ssh.ssh_argv([self.python, "-c", agent_source()])

    def request_line(self, op: str, fields: dict[str, Any]) -> bytes:
        return (json.dumps({"op": op, "dir": self.base, **fields}) + "\n").encode("utf-8")

    def call(
        self,
        op: str,
        *,
        payload: Iterable[bytes] = (),
        stderr: IO[str] | None = None,
        timeout: float | None = 120,
        **fields: Any,
    ) -> dict[str, Any]:
        """Run one op and return its JSON answer. `stderr`: where the remote's progress text goes
        (captured for error messages when None)."""
        process = subprocess.Popen(
            self.argv(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if stderr is None else stderr,
        )
        try:
            assert process.stdin is not None
            try:
                process.stdin.write(self.request_line(op, fields))
                for block in payload:
                    process.stdin.write(block)
            except BrokenPipeError:
                pass  # the far side ended early; its exit status and stderr say why
            out, err = process.communicate(timeout=timeout)
        except BaseException:
            process.kill()
            process.wait()
            raise
        self.raise_for(process.returncode, out, err)
        text = out.decode("utf-8", "replace").strip().splitlines()
        try:
            return json.loads(text[-1]) if text else {}
        except ValueError:
            raise TunesmithError(
                f"{self.ssh.host}: unreadable answer from the remote helper: {text[-1][:300]!r}"
            ) from None

    def open_stream(self, op: str, **fields: Any) -> subprocess.Popen:
        """Start an op whose stdout is a byte stream (logs, fetch); the caller reads and then calls `finish`."""
        process = subprocess.Popen(self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdin is not None
        process.stdin.write(self.request_line(op, fields))
        process.stdin.close()
        return process

    def finish(self, process: subprocess.Popen, tail: bytes = b"") -> None:
        err = process.stderr.read() if process.stderr else b""
        process.wait()
        self.raise_for(process.returncode, tail, err)

    def raise_for(self, code: int, out: bytes, err: bytes | None) -> None:
        if code == 0:
            return
        message = (err or b"").decode("utf-8", "replace").strip()
        if code == REFUSED:
            try:
                reason = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])["error"]
            except (ValueError, IndexError, KeyError):
                reason = message or "refused"
            raise UserError(f"{self.ssh.host}: {reason}")
        if code == SSH_FAILED:
            if "Host key verification failed" in message:
                raise host_key_refused(self.ssh, changed="IDENTIFICATION HAS CHANGED" in message)
            last = message.splitlines()[-1] if message else "no message"
            raise UserError(f"cannot reach {self.ssh.host} over ssh: {last}")
        if code == 127:
            raise UserError(
                f"{self.ssh.host}: {self.python!r} was not found on the host "
                f"(install Python 3.8+ or pass --remote-python): {message[-300:]}"
            )
        raise TunesmithError(f"{self.ssh.host}: remote helper failed (exit {code}): {message[-2000:]}")

    # ------------------------------------------------------------------ files

    def hash_local(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = sha256_file(path)
        return self._hashes[key]

    def upload(self, paths: Iterable[Path], progress: Callable[[str], None] | None = None) -> dict[Path, str]:
        """Make every file present on the host as blobs/<sha256>; only contents not there yet are sent
        (one round trip asks which). Returns each path's sha256."""
        hashes = {Path(p): self.hash_local(Path(p)) for p in paths}
        if not hashes:
            return hashes
        missing = set(self.call("missing", hashes=sorted(set(hashes.values())))["missing"])
        to_send: dict[str, Path] = {}
        for path, sha in hashes.items():
            if sha in missing and sha not in to_send:
                to_send[sha] = path
        if progress:
            sent = sum(p.stat().st_size for p in to_send.values())
            progress(
                f"{len(hashes)} file(s): {len(to_send)} to send ({sent / 1e6:.1f} MB), "
                f"{len(set(hashes.values())) - len(to_send)} already on the host"
            )
        if to_send:
            items = [{"sha": sha, "size": path.stat().st_size} for sha, path in to_send.items()]
            self.call("put", files=items, payload=_file_blocks(list(to_send.values())), timeout=None)
        return hashes

    def fetch(self, name: str, dest: Path, *, checkpoints: bool = False) -> Path:
        """Bring runs/<name> back into dest/<name> (and the remote log as dest/<name>.remote.log)."""
        dest.mkdir(parents=True, exist_ok=True)
        process = self.open_stream("fetch", name=name, checkpoints=checkpoints)
        assert process.stdout is not None
        head = process.stdout.read(4)
        if head != b"TAR\n":  # a refusal ({"error": ...}) or a failed connection instead of a tar stream
            self.finish(process, head + process.stdout.read())
            raise TunesmithError(f"{self.ssh.host}: no run folder came back")
        try:
            with tarfile.open(fileobj=process.stdout, mode="r|") as tar:
                for member in tar:
                    top = member.name.split("/", 1)[0]
                    if top not in (name, f"{name}.remote.log"):
                        raise TunesmithError(f"unexpected entry in the fetched run: {member.name!r}")
                    tar.extract(member, dest, filter="data")
        except tarfile.TarError as err:
            process.kill()
            self.finish(process)
            raise TunesmithError(f"{self.ssh.host}: the run folder did not arrive whole: {err}") from None
        self.finish(process)
        return dest / name


def _file_blocks(paths: list[Path]) -> Iterable[bytes]:
    for path in paths:
        with path.open("rb") as handle:
            yield from iter(lambda: handle.read(1 << 20), b"")


def host_key_refused(ssh: SshSettings, changed: bool = False) -> UserError:
    """The message for a host key ssh does not know (or that changed): the host's fingerprints as
    ssh-keyscan sees them now, and how to accept the key after checking it."""
    hostname, port = ssh.resolved()
    scan_argv = ["ssh-keyscan", "-p", str(port), "--", hostname]
    try:
        scan = subprocess.run(scan_argv, capture_output=True, text=True, timeout=30)
        prints = (
            subprocess.run(
                ["ssh-keygen", "-lf", "-"], input=scan.stdout, capture_output=True, text=True, timeout=30
            ).stdout.strip()
            if scan.stdout.strip()
            else ""
        )
    except (OSError, subprocess.TimeoutExpired):
        prints = ""
    shown = "\n".join(f"    {line}" for line in prints.splitlines()) or "    (ssh-keyscan could not read it)"
    port_flag = f"-p {port} " if port != 22 else ""
    if changed:
        head = (
            f"the host key of {ssh.host} has CHANGED since it was recorded in known_hosts; "
            f"connection refused (this can be an attack). The host now presents:"
        )
        fix = (
            f"If the host was really reinstalled, remove the old key (ssh-keygen -R {hostname}) and accept the new one:"
        )
    else:
        head = (
            f"the host key of {ssh.host} is not known (strict host key checking); connection refused. "
            "The host presents:"
        )
        fix = "Check these fingerprints with the host's owner, then accept the key:"
    return UserError(
        f"{head}\n{shown}\n{fix}\n    ssh-keyscan {port_flag}{hostname} >> ~/.ssh/known_hosts\n"
        f"or connect once with: ssh {port_flag}{ssh.host.destination}"
    )
