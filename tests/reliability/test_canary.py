"""A canary key, searched for in every output and every file, across every kind of run.

The simulator accepts only the canary key; runs succeed with faults and ``-vv``, fail in
each class (with and without ``MIRROR_DEBUG=1`` tracebacks), are killed and interrupted,
read the key from a key file, and reject a key file others can read. Afterwards neither
the key nor its secret half may appear in any stdout or stderr, in any file the runs left
behind (database, WAL, shared memory, lock, backups, run log), nor in a running sync's
command line.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from mirror.simulator import FaultConfig, SimulatedAPI

from .rel_helpers import count, env_for, run_cli, static_world, sync_args, wait_for

SECRET = "cAnArY-s3cr3t-7Qz9Xw"
CANARY = f"canary-key-id-41:{SECRET}"
NEEDLES = (CANARY.encode(), SECRET.encode(), SECRET.lower().encode())


def _leaks(text: str | bytes) -> bool:
    data = text.encode() if isinstance(text, str) else text
    return any(n in data for n in NEEDLES)


def test_the_key_appears_in_no_output_and_no_file(tmp_path) -> None:
    world = static_world(seed=111, hours=8, per_hour=40)
    outputs: list[tuple[str, str]] = []
    codes: dict[str, int] = {}
    work = tmp_path / "w"
    work.mkdir()
    db = work / "m.db"

    def run(name: str, args: list[str], faults: FaultConfig | None = None, **kw) -> None:  # type: ignore[no-untyped-def]
        api.faults = faults
        env = env_for(api.base_url, FAL_KEY=CANARY)
        for k, v in kw.pop("env", {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        o = run_cli(args, env, tmp_path / "out", no_second_wait=True, **kw)
        outputs.append((name, o.stdout + o.stderr))
        codes[name] = o.code
        count("canary runs")

    with SimulatedAPI(world, keys=frozenset({CANARY})) as api:
        faults = FaultConfig(seed=3, p_429=0.2, retry_after=0.01, p_5xx=0.2, p_reset=0.1,
                             p_truncate=0.1)  # fmt: skip
        run("sync -vv with faults", sync_args(db, "--since", "9h", "-vv"), faults)
        run("incremental sync -v", sync_args(db, "-v"))
        run("sync of a foreign endpoint (403), debug", sync_args(db, "-e", "other/app", targets=[]),
            env={"MIRROR_DEBUG": "1"})  # fmt: skip
        run("outage, debug traceback", sync_args(db, "-vv"), FaultConfig(outage=True),
            env={"MIRROR_DEBUG": "1", "MIRROR_RETRY_ATTEMPTS": "2"})  # fmt: skip
        run("bad data, debug traceback", sync_args(db, "-vv", "--lookback", "1d"),
            FaultConfig(bad_data="wrong_types"), env={"MIRROR_DEBUG": "1"})  # fmt: skip
        run("stalled body, -vv", sync_args(db, "-vv", "--lookback", "1d"),
            FaultConfig(p_stall=1.0, stall_byte_delay=0.05),
            env={"MIRROR_REQUEST_DEADLINE": "0.5", "MIRROR_RETRY_ATTEMPTS": "2"})  # fmt: skip
        run("killed mid-run", sync_args(db, "-vv", "--lookback", "1d"), FaultConfig(latency=0.05),
            kill_after=0.2)  # fmt: skip
        run("SIGTERM mid-run", sync_args(db, "-vv", "--lookback", "1d"), FaultConfig(latency=0.05),
            kill_after=0.2, sig=signal.SIGTERM)  # fmt: skip
        keyfile = tmp_path / "fal-key"
        keyfile.write_text(CANARY + "\n")
        keyfile.chmod(0o600)
        run("key from a key file, -vv", sync_args(db, "-vv"),
            env={"FAL_KEY": None, "MIRROR_KEY_FILE": str(keyfile)})  # fmt: skip
        keyfile.chmod(0o644)
        run("key file readable by others", sync_args(db),
            env={"FAL_KEY": None, "MIRROR_KEY_FILE": str(keyfile)})  # fmt: skip
        run("the canary as a wrong key (401), debug", sync_args(db, "-vv"),
            env={"FAL_KEY": "canary-key-id-41:" + SECRET[::-1] + "-" + SECRET, "MIRROR_DEBUG": "1"})  # fmt: skip
        run("storage failure, debug", sync_args(work / "nope" / "m.db", "-v"),
            env={"MIRROR_DEBUG": "1"})  # fmt: skip
        run("status", ["status", "--db", str(db)])
        run("query", ["query", "--db", str(db), "-f", "json", "-n", "5"])

        # a running sync's command line
        env = env_for(api.base_url, FAL_KEY=CANARY)
        api.faults = FaultConfig(latency=0.3)
        p = subprocess.Popen([sys.executable, "-m", "mirror", *sync_args(db, "--lookback", "1d")],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        try:
            wait_for(lambda: len(api.log) > 0 and api.log[-1].time is not None, 60, "a call")
            cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes()
        finally:
            p.kill()
            out, err = p.communicate()
        outputs.append(("running sync (killed)", (out + err).decode(errors="replace")))

    assert len(outputs) >= 15
    # the runs did what they were meant to (so their outputs are worth searching)
    assert codes["sync -vv with faults"] == 0 and codes["incremental sync -v"] == 0, codes
    assert codes["killed mid-run"] == -signal.SIGKILL and codes["SIGTERM mid-run"] == 130, codes
    assert codes["key file readable by others"] == 2, codes
    assert sum("Traceback" in text for _, text in outputs) >= 3, "no debug traceback was searched"
    assert sum("GET /serverless/requests/by-endpoint" in text for _, text in outputs) >= 3
    assert _leaks(keyfile.read_bytes()), "the search itself does not work"
    assert not _leaks(cmdline), "the key is on a running sync's command line"
    leaked = [name for name, text in outputs if _leaks(text)]
    assert not leaked, f"the key was printed by: {leaked}"
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p != keyfile]
    assert any(p.name.endswith(".db") for p in files) and any(
        p.name.endswith(".lock") for p in files
    )
    bad = [str(p.relative_to(tmp_path)) for p in files if _leaks(p.read_bytes())]
    assert not bad, f"the key was written to: {bad}"
    count("files searched for the canary", len(files))
