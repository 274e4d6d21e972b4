"""One program, one disposable unit: what a program does ends with it and reaches nothing else.

For every namespaced isolation level available here (`bwrap`, `unshare`) in both worker modes,
real programs try to outlive their run, leave files for the next program, read their worker,
forge an infrastructure failure, or fill their scratch; each is checked from outside (the host's
/proc) and by the next program in the same worker, which must run normally.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import pytest

import scicode
from scicode.codec import FrameReader
from scicode.execution import ExecutorOptions, StepProgram, isolation, make_executor
from scicode.execution.isolation import probe

LEVELS = [name for name in ("bwrap", "unshare") if name in probe(sys.executable)]
CONFIGS = [(level, mode) for level in LEVELS for mode in ("warm", "fresh")]
pytestmark = pytest.mark.skipif(not LEVELS, reason="no namespaced isolation level works here")


@pytest.fixture(scope="module", params=CONFIGS, ids=[f"{lv}-{m}" for lv, m in CONFIGS])
async def ex(request):
    level, mode = request.param
    # One worker: every program below runs in the same worker as the one before it.
    executor = make_executor(
        "local",
        ExecutorOptions(
            concurrency=1, memory_mb=1024, output_mb=8, disk_mb=16, extra={"isolation": level, "worker_mode": mode}
        ),
    )
    yield executor
    await executor.aclose()


async def run(ex, source: str, timeout: float = 30):
    return await ex.run(StepProgram(step_id="t", source=source), timeout=timeout)


def ending(result) -> dict:
    """The last probe event: how the program ended, as it recorded it."""
    return FrameReader(result.probe, max_bytes=1 << 30).frames()[-1][0]


def ended_normally(result) -> bool:
    events = [h["ev"] for h, _ in FrameReader(result.probe, max_bytes=1 << 30).frames()]
    return result.returncode == 0 and events[-1:] == ["done"]


def alive_with_name(name: str) -> list[str]:
    """Host-side: threads anywhere on this machine whose name is `name`."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/task/[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                found.append(str(comm.parent))
        except OSError:
            continue
    return found


async def gone_soon(name: str) -> list[str]:
    for _ in range(40):  # the kernel's teardown of a namespace is asynchronous, but quick
        left = alive_with_name(name)
        if not left:
            return []
        await asyncio.sleep(0.05)
    return left


SURVIVORS = {
    # A forked child whose thread-group leader exits while one of its threads keeps running.
    "zombie leader's thread": """
import ctypes, os, threading, time
if os.fork() == 0:
    def loop():
        ctypes.CDLL(None).prctl(15, b"{name}", 0, 0, 0)
        while True:
            time.sleep(0.01)
    threading.Thread(target=loop).start()
    time.sleep(0.2)
    ctypes.CDLL(None).syscall(60, 0)  # SYS_exit: only the leader thread ends
time.sleep(0.5)
""",
    "double-forked daemon in a new session": """
import ctypes, os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        ctypes.CDLL(None).prctl(15, b"{name}", 0, 0, 0)
        while True:
            time.sleep(0.01)
    os._exit(0)
time.sleep(0.3)
""",
}


@pytest.mark.parametrize("source", SURVIVORS.values(), ids=SURVIVORS.keys())
async def test_nothing_outlives_its_program(ex, source) -> None:
    name = uuid.uuid4().hex[:12]
    r = await run(ex, source.replace("{name}", name))
    assert r.returncode == 0, r.stderr
    assert await gone_soon(name) == []
    assert ended_normally(await run(ex, "import os\nassert os.getpid() == 1\n"))


async def test_no_file_reaches_the_next_program(ex) -> None:
    marker = uuid.uuid4().hex
    first = await run(
        ex,
        f"import os\nfor d in ('/tmp', '/dev/shm', os.getcwd(), os.environ['HOME']):\n"
        f"    open(os.path.join(d, '{marker}'), 'w').write('x')\n",
    )
    assert first.returncode == 0, first.stderr
    second = await run(
        ex,
        f"import os\nseen = [d for d in ('/tmp', '/dev/shm', os.getcwd()) if os.path.exists(os.path.join(d, '{marker}'))]\n"
        "assert not seen, seen\n",
    )
    assert ended_normally(second), second.stderr


async def test_a_full_scratch_hurts_only_its_program(ex) -> None:
    fill = "chunk = b'x' * (1 << 20)\nfor i in range(10**6):\n    with open(f'/tmp/fill{i}', 'wb') as f:\n        for _ in range(4):\n            f.write(chunk)\n"
    r = await run(ex, fill)
    last = ending(r)
    assert r.returncode == 1 and "No space left" in last.get("message", ""), last
    after = await run(ex, "open('/tmp/after', 'wb').write(b'y' * (8 << 20))\n")
    assert ended_normally(after), after.stderr


async def test_the_worker_is_out_of_reach(ex) -> None:
    source = """
import os, signal
assert os.getpid() == 1 and os.getppid() == 0
me = os.readlink('/proc/self')  # this process, as /proc numbers it
others = [p for p in os.listdir('/proc') if p.isdigit() and p != me]
for pid in others:
    for name in ('mem', 'environ', 'maps', 'cwd'):
        try:
            data = os.listdir(f'/proc/{pid}/cwd') if name == 'cwd' else open(f'/proc/{pid}/{name}', 'rb').read(64)
        except OSError:
            continue
        raise AssertionError(f'read /proc/{pid}/{name}: {data!r}')
try:
    os.kill(-1, signal.SIGKILL)  # everything this program may signal: none but its own (here none)
except ProcessLookupError:
    pass
"""
    r = await run(ex, source)
    assert ended_normally(r), ending(r)
    assert ended_normally(await run(ex, "pass\n"))


FORGERIES = {
    "the old setup-failed status": "raise SystemExit(97)",
    "a status byte on every fd": "import os\nfor fd in range(3, 64):\n    try: os.write(fd, b'\\x61')\n    except OSError: pass\nraise SystemExit(97)",
    "closing every inherited fd": "import os\nos.closerange(0, 1024)\nos._exit(97)",
    "killing itself": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\nimport time\ntime.sleep(1)\nos._exit(97)",
}


@pytest.mark.parametrize("source", FORGERIES.values(), ids=FORGERIES.keys())
async def test_no_program_forges_an_infrastructure_failure(ex, source) -> None:
    r = await run(ex, source)  # raises SandboxUnavailable if read as the sandbox's failure
    assert r.returncode != 0 or r.signal
    assert ended_normally(await run(ex, "pass\n"))


async def test_the_host_is_hidden_and_read_only(ex) -> None:
    checkout = Path(scicode.__file__).resolve().parent
    home = Path.home()
    source = f"""
import os, site, sysconfig
hidden = [p for p in ({str(checkout / "data")!r}, {str(checkout / "scorer.py")!r}, {str(home / ".cache")!r}, {os.environ.get("SCICODE_CACHE_DIR", "/nonexistent")!r}, '/etc/shadow')
          if os.path.exists(p) and (os.path.isdir(p) and os.listdir(p) or os.path.isfile(p) and open(p, 'rb').read(1))]
assert not hidden, hidden
writable = []
for d in {{sysconfig.get_paths()['purelib'], sysconfig.get_paths()['stdlib'], '/usr', '/etc', os.path.dirname(os.__file__)}}:
    try:
        open(os.path.join(d, 'scicode-write-test.pth'), 'w').write('import os')
        writable.append(d)
    except OSError:
        pass
assert not writable, writable
"""
    r = await run(ex, source)
    assert ended_normally(r), r.stderr[-1500:]


async def test_gold_and_model_code_never_share_workers(scorer) -> None:
    assert scorer.derivation is not scorer.executor


async def test_kernel_settings_are_read_only(ex) -> None:
    # Found by an adversarial review: with the sandbox's uid mapped to the host's root, a writable
    # /proc/sys/kernel/core_pattern ran a command as host root (and stole the gold code).
    source = """
import os
written = []
for path in ('/proc/sys/kernel/core_pattern', '/proc/sys/kernel/hostname', '/proc/sys/vm/overcommit_memory', '/proc/sysrq-trigger'):
    try:
        with open(path, 'w') as f:
            f.write(open(path).read() if 'sysrq' not in path else 'h')
        written.append(path)
    except OSError:
        pass
assert not written, written
"""
    r = await run(ex, source)
    assert ended_normally(r), ending(r)


async def test_a_source_that_cannot_be_encoded_is_the_programs_failure(ex) -> None:
    # Found by an adversarial review: a lone surrogate in the reply became sandbox_error.
    r = await run(ex, "s = '\ud800'\n")
    assert r.returncode != 0 or r.signal
    assert ended_normally(await run(ex, "pass\n"))


async def test_no_program_reads_an_earlier_programs_source(ex) -> None:
    # Found by an adversarial review: in warm mode the next program's process was forked while the
    # worker's frame still held the previous request, so walking the stack gave its source.
    marker = uuid.uuid4().hex
    assert ended_normally(await run(ex, f"secret = '{marker}'\n"))
    probe = f"""
import gc, sys
f = sys._getframe()
while f is not None:
    assert '{marker[:16]}' + '{marker[16:]}' not in repr(f.f_locals), f.f_code.co_name
    f = f.f_back
"""
    r = await run(ex, probe)
    assert ended_normally(r), ending(r)


async def test_no_program_finds_an_earlier_program_in_its_memory(ex) -> None:
    # Found by an adversarial review: a warm worker's freed heap still held earlier requests and
    # replies, and each program's process was forked from it. Programs are now forked by a
    # process that has never seen either, so this scan of the program's whole address space
    # finds nothing of the previous program's source or output.
    import hashlib

    marker = uuid.uuid4().hex
    assert ended_normally(await run(ex, f"secret = '{marker}'\nprint('out=' + secret * 4)\n"))
    digest = hashlib.sha256(marker.encode()).hexdigest()
    scan = f"""
import ctypes, hashlib, re
found = set()
with open('/proc/self/maps') as maps:
    regions = [line.split()[:2] for line in maps]
for addresses, perms in regions:
    if perms.startswith('rw'):
        start, end = (int(a, 16) for a in addresses.split('-'))
        chunk = ctypes.string_at(start, end - start)
        for m in re.finditer(rb"[0-9a-f]{{32}}", chunk):
            if hashlib.sha256(m.group()).hexdigest() == '{digest}':
                found.add(hex(start))
assert not found, found
"""
    r = await run(ex, scan, timeout=60)
    assert ended_normally(r), ending(r)


async def test_no_program_makes_namespaces_mounts_or_keys(ex) -> None:
    # Found by an adversarial review: a program could create a user namespace and mount a tmpfs
    # there that no memory limit counts, and kernel keys (shared by a host uid) carried data from
    # one program to the next.
    source = """
import ctypes, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
made = []
for flags in (0x10000000, 0x10000000 | 0x00020000, 0x00020000, 0x04000000):
    if libc.unshare(flags) == 0:
        made.append(hex(flags))
if libc.mount(b"none", b"/tmp", b"tmpfs", 0, b"size=1g") == 0:
    made.append("mount")
if libc.umount2(b"/tmp", 2) == 0:
    made.append("umount")
if libc.syscall(248, b"user", b"scicode-key", b"data", 4, -3) >= 0:  # add_key to the session keyring
    made.append("key")
if libc.sethostname(b"scicode", 7) == 0:
    made.append("hostname")
shell = subprocess.run(["unshare", "-Urm", "true"], capture_output=True)
if shell.returncode == 0:
    made.append("unshare(1)")
assert not made, made
try:
    keys = open('/proc/keys').read()
except OSError:  # hidden
    keys = ''
assert 'scicode-key' not in keys, keys
"""
    r = await run(ex, source)
    assert ended_normally(r), ending(r)


def host_uids(pid: int) -> set[int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {int(u) for u in fields["Uid"].split()}, int(fields["PPid"])


async def test_no_sandbox_process_is_host_root(ex) -> None:
    # Found by an adversarial review: run as root, the sandbox's uid mapped to the host's root,
    # the owner of kernel-wide settings and root-owned files. Seen from the host, neither the
    # program nor its worker may be root, whoever runs scicode.
    name = f"sc{uuid.uuid4().hex[:12]}"
    source = f"""
import ctypes, time
ctypes.CDLL(None).prctl(15, b"{name}", 0, 0, 0)
time.sleep(1.5)
"""
    task = asyncio.ensure_future(run(ex, source))
    found: list[str] = []
    for _ in range(100):
        found = alive_with_name(name)
        if found:
            break
        await asyncio.sleep(0.02)
    assert found, "the program never showed up on the host"
    pid = int(found[0].split("/")[2])
    uids, parent = host_uids(pid)
    worker_uids, _ = host_uids(parent)
    await task
    assert 0 not in uids | worker_uids, (uids, worker_uids)
    if os.getuid() != 0:
        assert uids == {os.getuid()}


@pytest.mark.parametrize(
    ("works_unprivileged", "works_as_root", "expected"),
    [(True, True, isolation.SANDBOX_USER), (False, True, None), (False, False, "absent")],
)
def test_as_root_a_level_runs_unprivileged_where_it_can(
    monkeypatch, caplog, works_unprivileged, works_as_root, expected
) -> None:
    # Where unprivileged user namespaces are refused, root can still build the sandbox mapped to
    # itself: better than no isolation, and it must be said, not silent.
    monkeypatch.setattr(isolation.os, "geteuid", lambda: 0)
    monkeypatch.setattr(isolation, "_level_works", lambda level: works_unprivileged if level.user else works_as_root)
    level = isolation._working_variant(isolation.Level("bwrap", "notes", True, sys.executable))
    if expected == "absent":
        assert level is None
        return
    assert level is not None and level.user == expected
    root_mapped = expected is None
    assert ("maps to host root" in level.notes) is root_mapped
    assert ("host's root" in caplog.text) is root_mapped


async def test_a_burst_of_forks_stops_at_the_process_limit(ex) -> None:
    # Found by an adversarial review: the process limit was only polled, so shells forking in
    # parallel exhausted the host's PIDs (32768 here) before the worker looked. The kernel now
    # refuses forks a few past the limit (256), and the worker then ends the program rather than
    # leaving it spinning on failing forks. Bounded here: 8 forkers of 50 sleepers each; every
    # process that exists writes one byte to the shared stdout.
    source = """
import os, time
forkers = []
for _ in range(8):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os.write(1, b'+')
        for _ in range(50):
            try:
                if os.fork() == 0:
                    os.write(1, b'+')
                    time.sleep(120)
                    os._exit(0)
            except OSError:
                pass
        time.sleep(120)
        os._exit(0)
time.sleep(120)
"""
    r = await run(ex, source, timeout=150)  # forks of a warm worker are slow on a busy machine
    assert r.killed_for == "processes", (r.killed_for, ending(r))
    assert r.stdout.count("+") + 1 <= 256 + 8, r.stdout.count("+")


async def test_no_worker_process_shows_in_the_programs_proc(ex) -> None:
    # Found by an adversarial review: the worker was covered in the program's /proc but its
    # zygote was not, and its counters told how many programs the worker had run.
    source = """
import os
me = os.readlink('/proc/self')  # this program's own process (a fork of the worker, in warm mode)
seen = []
for pid in (p for p in os.listdir('/proc') if p.isdigit() and p != me):
    try:
        cmdline = open(f'/proc/{pid}/cmdline', 'rb').read()
    except OSError:
        continue
    if b'scicode.runtime.worker' in cmdline:
        seen.append((pid, cmdline[:80]))
assert not seen, seen
"""
    r = await run(ex, source)
    assert ended_normally(r), ending(r)


async def test_scratch_and_shared_memory_are_one_budget(ex) -> None:
    # Found by an adversarial review: /tmp and /dev/shm were separate tmpfs of max_disk_mb each.
    # The fixture's max_disk_mb is 16.
    source = """
chunk = b'x' * (1 << 20)
written = 0
for path in ('/tmp/a', '/dev/shm/b'):
    try:
        with open(path, 'wb') as f:
            for _ in range(12):
                f.write(chunk)
                f.flush()
                written += 1
    except OSError:
        pass
assert written <= 16, written
"""
    r = await run(ex, source)
    assert ended_normally(r), ending(r)


async def test_no_memory_outside_the_limits_through_files_in_memory(ex) -> None:
    # Found by an adversarial review: memfds (and many sockets' buffers) held gigabytes that no
    # address-space limit counts.
    source = """
import os, resource
try:
    os.memfd_create('x')
    made = True
except OSError:
    made = False
assert not made
assert resource.getrlimit(resource.RLIMIT_NOFILE)[1] <= 1024, resource.getrlimit(resource.RLIMIT_NOFILE)
"""
    r = await run(ex, source)
    assert ended_normally(r), ending(r)


def test_an_install_under_a_system_directory_is_hidden_too(monkeypatch, tmp_path) -> None:
    # Found by an adversarial review: `pip install` into /usr/local put the package's data (the
    # validation gold code) inside the `/usr` bind, and only installs outside the system
    # directories were masked; a wrong answer read the gold code and passed.
    system = tmp_path / "usr"
    site = system / "local" / "lib" / "site-packages"
    (site / "scicode" / "data").mkdir(parents=True)
    monkeypatch.setattr(isolation, "_SYSTEM_DIRS", (*isolation._SYSTEM_DIRS, str(system)))
    monkeypatch.setattr(isolation, "_interpreter", lambda python: ([str(system / "local")] * 5, [str(site)]))
    spec = isolation._root_spec(f"python-{uuid.uuid4().hex}", tmp_path / "payload", (), 1 << 20)
    assert str(system) in spec.binds
    assert str(site / "scicode") in spec.masks


async def test_nothing_above_the_scratch_is_writable(ex) -> None:
    # Found by an adversarial review: under bubblewrap, `/` and `/dev` were tmpfs shared by the
    # worker's programs; a program renamed a directory above a bind and planted stdlib modules
    # that ran in the next program's process (and stole its source).
    source = """
import os
done = []
for path in ('/x', '/dev/x', '/etc/x'):
    try:
        open(path, 'w').close()
        done.append(path)
    except OSError:
        pass
for entry in os.listdir('/'):
    if entry in ('tmp', 'proc'):
        continue
    try:
        os.rename('/' + entry, '/' + entry + '-moved')
        done.append(entry)
    except OSError:
        pass
assert not done, done
"""
    r = await run(ex, source)
    assert ended_normally(r), ending(r)
    assert ended_normally(await run(ex, "import json, encodings.unicode_escape\n"))
