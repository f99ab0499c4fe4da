"""Nothing leaves the machine: onnxruntime's telemetry is off for every session the pack creates.

Proven at the system-call level, not with a Python socket patch: ``tests/harness/offline_probe.py``
runs under ``strace -f`` (all threads, native ones included), creates every kind of onnxruntime
session the pack makes, waits past the moment onnxruntime's uploader resolves its host, then makes
one harmless canary ``connect()``. The trace must hold no connect/send to anything but loopback or
local sockets, no DNS query even to a local resolver, and the canary (so the trace did see).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


from conftest import require
from harness.needs import installed
from harness.offline_probe import CANARY
from hp3_core import offline

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 14  # onnxruntime 1.32's uploader resolves mobile.events.data.microsoft.com ~10 s after import

SEND_CALLS = ("connect", "sendto", "sendmsg", "sendmmsg")
_CALL = re.compile(r"^\d+\s+(?P<call>\w+)\((?P<args>.*)$")
_PORT = re.compile(r"sin6?_port=htons\((\d+)\)")
_IPV4 = re.compile(r'inet_addr\("([\d.]+)"\)')
_IPV6 = re.compile(r'inet_pton\(AF_INET6, "([^"]+)"')
_UNIX_PATH = re.compile(r'sun_path=@?"([^"]*)"')
# Local name services: a lookup through them is a lookup all the same.
_RESOLVER_SOCKETS = ("nscd", "resolve")


# -- the trace parser (unit-tested below, so a format change cannot make the proof vacuous) ------
def outgoing(trace: str) -> list[str]:
    """The trace lines that reach beyond this machine or resolve a name.

    Allowed: local (AF_UNIX, except name-service sockets), netlink, AF_UNSPEC disconnects, and
    loopback addresses on any port but 53. Sends without an address go to a connected socket, whose
    connect() is judged instead.
    """
    found = []
    for line in trace.splitlines():
        m = _CALL.match(line.strip())
        if not m or m.group("call") not in SEND_CALLS:
            continue
        if _is_outgoing(m.group("args")):
            found.append(line.strip())
    return found


def _is_outgoing(args: str) -> bool:
    if "sa_family=" not in args:
        return False  # no address: a connected socket
    if "sa_family=AF_UNIX" in args:
        path = _UNIX_PATH.search(args)
        return bool(path) and any(name in path.group(1) for name in _RESOLVER_SOCKETS)
    if "sa_family=AF_NETLINK" in args or "sa_family=AF_UNSPEC" in args:
        return False
    port = _PORT.search(args)
    if port and port.group(1) == "53":
        return True  # a DNS query, even to a resolver on loopback
    v4, v6 = _IPV4.search(args), _IPV6.search(args)
    if v4:
        return not v4.group(1).startswith("127.")
    if v6:
        return v6.group(1) not in ("::1",)
    return True  # another family (AF_PACKET, ...): never expected


def test_the_parser_flags_lookups_and_remote_hosts_only():
    trace = "\n".join([
        '12 connect(8, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = 0',
        '12 sendto(9, "Q[\\1"..., 50, MSG_NOSIGNAL, {sa_family=AF_INET, sin_port=htons(53), '
        'sin_addr=inet_addr("127.0.0.53")}, 16) = 50',
        '13 connect(3, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "2603:1030::1", &sin6_addr), sin6_scope_id=0}, 28 <unfinished ...>',
        '14 connect(4, {sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}, 110) = -1 ENOENT',
        # allowed:
        '15 connect(5, {sa_family=AF_UNIX, sun_path="/tmp/x.sock"}, 110) = 0',
        '15 connect(5, {sa_family=AF_INET, sin_port=htons(8188), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        '15 connect(6, {sa_family=AF_INET6, sin6_port=htons(8188), sin6_flowinfo=htonl(0), '
        'inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
        '15 sendto(5, "abc", 3, 0, NULL, 0) = 3',
        '15 connect(8, {sa_family=AF_UNSPEC, sa_data="..."}, 16) = 0',
        '15 sendto(7, [{nlmsg_len=20}], 20, 0, {sa_family=AF_NETLINK, nl_pid=0, nl_groups=00000000}, 12) = 20',
        '16 <... connect resumed>) = 0',
    ])
    found = outgoing(trace)
    assert len(found) == 4
    assert "10.255.255.53" in found[0] and "127.0.0.53" in found[1] and "2603" in found[2]
    assert "nscd" in found[3]


# -- the switch ------------------------------------------------------------------------------------
def test_importing_hp3_core_switches_onnxruntime_telemetry_off():
    assert os.environ.get(offline.TELEMETRY_ENV) == "1", "hp3_core's import sets it for this process"


def test_the_switch_is_forced_and_warns_when_onnxruntime_came_first(caplog):
    env = {offline.TELEMETRY_ENV: "0"}
    assert offline.keep_onnxruntime_offline(env, modules={}) is True
    assert env[offline.TELEMETRY_ENV] == "1", "an inherited 0 does not let the pack phone home"
    with caplog.at_level(logging.WARNING):
        late = offline.keep_onnxruntime_offline({}, modules={"onnxruntime": object()})
    assert late is False
    assert "imported before HP3" in caplog.text and "ORT_DISABLE_TELEMETRY=1" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # loaded with the switch already on: nothing to say
        assert offline.keep_onnxruntime_offline({offline.TELEMETRY_ENV: "1"},
                                                modules={"onnxruntime": object()}) is True
    assert caplog.text == ""


# -- the proof ---------------------------------------------------------------------------------------
def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-f", "-qq", "-e", "trace=connect", "-o", os.devnull, "true"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0  # ptrace may be forbidden in some containers


def test_no_connection_or_lookup_from_any_onnxruntime_session(tmp_path):
    installed("onnxruntime", "face analysis sessions are what this test traces")
    installed("insightface", "face analysis sessions are what this test traces")
    require(_strace_works(), "strace is missing or cannot trace here (make test installs it)")
    from harness.tiny_onnx import write_tiny_arcface, write_tiny_pack

    pack = write_tiny_pack(tmp_path / "insightface", "buffalo_l", detector=True)
    dynamic = write_tiny_arcface(tmp_path / "dynamic.onnx", dynamic_size=True)
    trace_path = tmp_path / "trace.txt"
    env = {k: v for k, v in os.environ.items() if k != offline.TELEMETRY_ENV}  # the pack must set it
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO)])
    cmd = ["strace", "-f", "-qq", "-s", "64", "-e", "trace=" + ",".join(SEND_CALLS), "-o", str(trace_path),
           sys.executable, "-m", "harness.offline_probe", str(pack), str(dynamic), str(WAIT_S)]
    run = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=WAIT_S + 60)
    assert run.returncode == 0, run.stdout + run.stderr
    found = outgoing(trace_path.read_text())
    canary = [line for line in found if f'inet_addr("{CANARY[0]}")' in line]
    assert len(canary) == 1, f"the trace missed the canary connect(): {found}"
    leaks = [line for line in found if line not in canary]
    assert leaks == [], "network traffic from the pack:\n" + "\n".join(leaks)
