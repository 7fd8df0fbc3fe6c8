"""Benchmark one node with many miners: dispatch throughput, latency and the node's RSS with
2, 100 and 1,000 miners connected and 1,000 requests in flight.

Usage (from the repository root)::

    .venv/bin/python bench/node_scale.py
    .venv/bin/python bench/node_scale.py --steps 2,100,1000 --duration 10 --keep-state

What runs, each its own process on 127.0.0.1 with the sandbox's TLS (an operator CA, mutual
TLS between Central and the node, server-authenticated TLS for miners and clients):

* Central (``python -m cgn_cli central``) and one node (``python -m cgn_cli node``) with its
  SQLite ledger (billing on), configured as the sandbox configures them;
* ``--miner-procs`` (default 2) processes of scripted miners (``bench/_scale_peers.py
  miners``): one Connect stream and one TLS connection per miner account, each miner offering
  ``echo`` with ``--slots`` work units (default 256, the node's cap), answering every
  assignment at once (WorkResponse with the body inline, then WorkSlots), so the node's
  dispatch is what is measured, not a DService. They use the optional protocol features the
  real miner uses (``--miner-features``, default ``batch,answer_acks``: the answer
  acknowledges its assignment, and an answer and its WorkSlots travel as one MinerBatch);
  ``--miner-features ''`` has them speak the base protocol (Ack, answer, WorkSlots: three
  messages per unit);
* ``--load-procs`` (default 2) load processes (``bench/_scale_peers.py load``) keeping
  ``--in-flight`` (default 1,000) WorkService.Call requests in flight on the node's work port
  in total, 64-byte bodies, with the session tokens of ``--enterprises`` (default 4)
  enterprise accounts, for ``--warmup`` + ``--duration`` seconds per step.

Miners are added step by step (``--steps``, default 2,100,1000) and stay connected. Per step:
completed requests/s in the window after the warm-up, p50/p99 latency, errors (non-OK gRPC
codes or a body that did not round-trip), the node's VmRSS and VmHWM at the window's end, the
node's CPU (user + system, all threads) per request completed in the window, the same from the
load's start until the node is idle again (so work it defers, such as ledger rows, counts),
how long it stayed busy after the load ended, the load's and the miners' CPU, and how many
miners the node dropped; then the ratio of the last step's throughput to the first's.
``--profile-node FILE`` runs the node under cProfile (its event loop thread).

Accounts: every account is real at Central, but created by the benchmark in Central's database
before Central starts, with a cheap Argon2id setting (``ARGON2_*`` below) instead of Central's
default (argon2-cffi's: t=3, m=64 MiB, p=4): Central verifies a key with the parameters stored
in its hash, so admitting 1,000 miners costs 1,000 cheap checks. The output says so.

Node settings: ``CGN_NODE_ACCOUNT_LIMIT`` stays at its default (256): the in-flight requests
are dealt over the enterprise accounts (4 x 250). ``CGN_NODE_QUEUE_DANGER_THRESHOLD`` is
raised to 5,000 so that requests beyond the miners' slots (2 miners x 256 < 1,000) queue
rather than get RESOURCE_EXHAUSTED. The ack deadline is the node's own (500 ms) unless
``--ack-deadline-ms`` says otherwise: since the node stopped blaming miners for its own
delays (an ack it had not yet read while reading a busy miner's stream no longer drops the
miner), 2 miners of 256 slots each keep up with it.

Every process started is ended by PID when the run finishes, even on error or SIGTERM
(SIGTERM, then SIGKILL after a timeout); each child also gets SIGTERM from the kernel if this
process dies. This is a 2-core machine shared with the load and the miners: compare the node's
CPU per request between steps more than the raw requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import Child, proc_cpu_seconds, read_json, spawn, stop_child

from central.accounts import AccountStore
from central.db import open_engine
from cgn_cli._admin import AdminClient
from cgn_common.certs import Authority, Identity, Role, write_issued
from cgn_common.rpc import open_channel
from cgn_common.tls import TlsConfig
from cgn_common.types import AccountKind, Tier
from generated.cgn.work.v1 import session_service_pb2 as session_pb
from generated.cgn.work.v1 import session_service_pb2_grpc as session_grpc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / "_scale_peers.py"
#: The bench's own accounts' Argon2id setting (the minimum memory argon2 allows for p=1 is 8
#: KiB; 64 KiB keeps a check well under a millisecond).
ARGON2_TIME_COST = 1
ARGON2_MEMORY_KIB = 64
ARGON2_PARALLELISM = 1
CENTRAL = Identity(Role.CENTRAL, "central-1")
OPERATOR = Identity(Role.OPERATOR, "bench-operator")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.05
QUEUE_DANGER_THRESHOLD = 5000
#: The node's ack deadline in this benchmark (its default is 500 ms; see the module docstring).
DEFAULT_ACK_DEADLINE_MS = 0
QUIET_CPU = 0.05
QUIET_SAMPLE_S = 0.5
QUIESCE_TIMEOUT_S = 120.0


# --------------------------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------------------------


def proc_mem_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid``, MiB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


async def quiesce(pid: int, timeout_s: float) -> float:
    """Waits until ``pid`` uses under QUIET_CPU of a core over QUIET_SAMPLE_S (its backlog,
    e.g. ledger rows of finished work, is done); returns the seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        before = proc_cpu_seconds(pid)
        await asyncio.sleep(QUIET_SAMPLE_S)
        if proc_cpu_seconds(pid) - before < QUIET_CPU * QUIET_SAMPLE_S:
            break
    return time.monotonic() - began


# --------------------------------------------------------------------------------------------
# Children
# --------------------------------------------------------------------------------------------


class Children:
    """Every process started, ended by PID in ``stop_all``."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[Child] = []

    async def spawn(
        self, name: str, args: list[str], env: dict[str, str], *, pipes: bool = False
    ) -> Child:
        """``sys.executable args...``; stdin/stdout piped with ``pipes``, else output to a log."""
        log = self.logs / f"{name}.log"
        child = await spawn(name, args, env, log, pipes=pipes, cwd=ROOT)
        self.started.append(child)
        return child

    async def stop_all(self, first: tuple[str, ...] = ()) -> list[str]:
        """SIGTERM to each in turn, those named in ``first`` first, then the others newest
        first, then SIGKILL after STOP_TIMEOUT_S; returns complaints (a child that needed
        SIGKILL)."""
        complaints: list[str] = []
        ordered = sorted(reversed(self.started), key=lambda c: c.name not in first)
        for child in ordered:
            running = child.proc.returncode is None
            outcome = await stop_child(child, STOP_TIMEOUT_S)
            if running and child.proc.returncode == -signal.SIGKILL:
                complaints.append(f"{child.name} (pid {child.pid}) {outcome}")
        return complaints


def read_endpoints(ready_file: Path) -> dict[str, str] | None:
    """The endpoints a ready file announces, or None while it is not written."""
    ready = read_json(ready_file)
    if ready is None:
        return None
    endpoints: dict[str, str] = ready["endpoints"]
    return endpoints


def load_average() -> str:
    """/proc/loadavg."""
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "?"


async def wait_ready(child: Child, ready_file: Path) -> dict[str, str]:
    """The endpoints in ``ready_file`` once the child wrote it (bounded)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if child.proc.returncode is not None:
            raise RuntimeError(f"{child.name} exited:\n{child.output_tail()}")
        endpoints = read_endpoints(ready_file)
        if endpoints is not None:
            return endpoints
        await asyncio.sleep(POLL_S)
    raise RuntimeError(f"{child.name} not ready after {START_TIMEOUT_S} s:\n{child.output_tail()}")


# --------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------


@dataclass
class Accounts:
    node_id: str
    enterprises: list[tuple[str, str]]
    miners: list[tuple[str, str]]


async def create_accounts(db: Path, miners: int, enterprises: int) -> Accounts:
    """Every account the bench needs, in Central's database, hashed with the ARGON2_* setting."""
    engine = await open_engine(f"sqlite+aiosqlite:///{db}")
    store = AccountStore(
        engine,
        hasher=PasswordHasher(
            time_cost=ARGON2_TIME_COST,
            memory_cost=ARGON2_MEMORY_KIB,
            parallelism=ARGON2_PARALLELISM,
        ),
    )
    try:
        node = await store.create(AccountKind.NODE, "bench node")
        made = [
            await store.create(AccountKind.ENTERPRISE, f"bench {i}") for i in range(enterprises)
        ]
        miner_accounts = [
            await store.create(AccountKind.MINER, f"bench miner {i}", tier=Tier.TIER_2_DATACENTER)
            for i in range(miners)
        ]
    finally:
        store.close()
        await engine.dispose()
    return Accounts(
        node.account.account_id,
        [(a.account.account_id, a.api_key) for a in made],
        [(a.account.account_id, a.api_key) for a in miner_accounts],
    )


def tls_env(prefix: str, certs: Path, identity: Identity | None) -> dict[str, str]:
    env = {f"{prefix}TLS_CA_FILE": str(certs / "ca.pem")}
    if identity is not None:
        stem = certs / f"{identity.role.value}-{identity.name}"
        env[f"{prefix}TLS_CERT_FILE"] = f"{stem}.pem"
        env[f"{prefix}TLS_KEY_FILE"] = f"{stem}.key"
    return env


@dataclass
class Cluster:
    node: Child
    central: Child
    endpoints: dict[str, str]
    tokens: list[str]
    miners: list[tuple[str, str]]


async def start_cluster(args: argparse.Namespace, state: Path, children: Children) -> Cluster:
    """Certificates, accounts, Central, the node (linked), and the enterprises' sessions."""
    certs = state / "certs"
    certs.mkdir()
    authority = Authority.create("bench CA")
    authority.save(certs / "ca.pem", certs / "ca.key")
    accounts = await create_accounts(state / "central.db", max(args.steps), args.enterprises)
    node_identity = Identity(Role.NODE, accounts.node_id)
    for identity in (CENTRAL, OPERATOR, node_identity):
        write_issued(authority, identity, certs)
    central = await children.spawn(
        "central",
        ["-m", "cgn_cli", "central", "--ready-file", str(state / "central.ready")],
        {
            "CGN_CENTRAL_DATABASE_URL": f"sqlite+aiosqlite:///{state / 'central.db'}",
            "CGN_CENTRAL_ADMIN_LISTEN": "127.0.0.1:0",
            "CGN_CENTRAL_REPLICA_ID": CENTRAL.name,
            **tls_env("CGN_CENTRAL_", certs, CENTRAL),
        },
    )
    admin_address = (await wait_ready(central, state / "central.ready"))["admin"]
    node = await children.spawn(
        "node",
        [
            *(["-m", "cProfile", "-o", args.profile_node] if args.profile_node else []),
            *("-m", "cgn_cli", "node", "--ready-file", str(state / "node.ready")),
        ],
        {
            "CGN_NODE_NODE_ID": accounts.node_id,
            "CGN_NODE_SESSION_KEY_FILE": str(state / "session.key"),
            "CGN_NODE_LEDGER_URL": f"sqlite:///{state / 'ledger.db'}",
            "CGN_NODE_WORK_LISTEN": "127.0.0.1:0",
            "CGN_NODE_INTERNAL_LISTEN": "127.0.0.1:0",
            "CGN_NODE_MINER_LINK_LISTEN": "127.0.0.1:0",
            "CGN_NODE_STATUS_LISTEN": "127.0.0.1:0",
            "CGN_NODE_CENTRAL_LINK_LISTEN": "127.0.0.1:0",
            "CGN_NODE_DSERVICES": "echo",
            "CGN_NODE_QUEUE_DANGER_THRESHOLD": str(QUEUE_DANGER_THRESHOLD),
            **(
                {"CGN_NODE_ACK_DEADLINE_MS": str(args.ack_deadline_ms)}
                if args.ack_deadline_ms
                else {}
            ),
            **tls_env("CGN_NODE_", certs, node_identity),
        },
    )
    endpoints = await wait_ready(node, state / "node.ready")
    op = tls_env("", certs, OPERATOR)
    admin = AdminClient(
        admin_address, TlsConfig(op["TLS_CERT_FILE"], op["TLS_KEY_FILE"], op["TLS_CA_FILE"])
    )
    try:
        await admin.register_node(accounts.node_id, endpoints)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not await admin.node_linked(accounts.node_id):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Central did not link the node:\n{central.output_tail()}")
            await asyncio.sleep(POLL_S)
    finally:
        await admin.close()
    tokens = []
    async with open_channel(endpoints["work"], TlsConfig(ca_file=str(certs / "ca.pem"))) as ch:
        stub = session_grpc.SessionServiceStub(ch)
        for account_id, api_key in accounts.enterprises:
            session = await stub.CreateSession(
                session_pb.CreateSessionRequest(account_id=account_id, api_key=api_key),
                timeout=30,
            )
            tokens.append(session.token)
    return Cluster(node, central, endpoints, tokens, accounts.miners)


# --------------------------------------------------------------------------------------------
# Miners and load
# --------------------------------------------------------------------------------------------


class MinerProcs:
    """The scripted-miner processes; miners are dealt to them in turn."""

    def __init__(self, procs: list[Child]) -> None:
        self.procs = procs

    @classmethod
    async def start(
        cls, args: argparse.Namespace, cluster: Cluster, state: Path, children: Children
    ) -> MinerProcs:
        procs = []
        for index in range(args.miner_procs):
            mine = cluster.miners[index :: args.miner_procs]
            accounts = state / f"miners-{index}.json"
            accounts.write_text(json.dumps(mine))
            accounts.chmod(0o600)
            procs.append(
                await children.spawn(
                    f"miners-{index}",
                    [
                        str(PEERS),
                        "miners",
                        "--address",
                        cluster.endpoints["miner_link"],
                        "--ca-file",
                        str(state / "certs" / "ca.pem"),
                        "--accounts",
                        str(accounts),
                        "--slots",
                        str(args.slots),
                        "--features",
                        args.miner_features,
                    ],
                    {},
                    pipes=True,
                )
            )
        return cls(procs)

    async def _ask(self, child: Child, command: str) -> str:
        assert child.proc.stdin is not None
        assert child.proc.stdout is not None
        child.proc.stdin.write(f"{command}\n".encode())
        await child.proc.stdin.drain()
        line = await child.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{child.name} exited:\n{child.output_tail()}")
        return line.decode().strip()

    async def connect(self, total: int) -> None:
        """Has ``total`` miners connected and welcomed, across the processes."""
        n = len(self.procs)
        shares = [total // n + (i < total % n) for i in range(n)]
        answers = await asyncio.gather(
            *(self._ask(c, f"connect {s}") for c, s in zip(self.procs, shares, strict=True))
        )
        for child, share, answer in zip(self.procs, shares, answers, strict=True):
            got = int(answer.split()[1])
            if got != share:
                raise RuntimeError(
                    f"{child.name}: {answer!r}, wanted {share}:\n{child.output_tail()}"
                )

    async def stats(self) -> list[dict[str, Any]]:
        answers = await asyncio.gather(*(self._ask(c, "stats") for c in self.procs))
        return [json.loads(a) for a in answers]


@dataclass
class Row:
    miners: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: Counter[str]
    rss_mib: float
    hwm_mib: float
    cpu_us_per_req: float
    #: Node CPU from the load's start until the node was idle again, per request completed.
    step_cpu_us_per_req: float
    #: Seconds the node stayed busy after the load ended.
    backlog_s: float
    load_cpu_pct: float
    miners_cpu_pct: float
    #: Miners the node dropped during the step (e.g. for a late ack).
    lost: int


async def run_step(
    args: argparse.Namespace,
    cluster: Cluster,
    state: Path,
    children: Children,
    miners: MinerProcs,
    count: int,
) -> Row:
    """Connects miners up to ``count`` and runs the load against them."""
    await miners.connect(count)
    await asyncio.sleep(args.settle)
    await quiesce(cluster.node.pid, QUIESCE_TIMEOUT_S)
    step_cpu = proc_cpu_seconds(cluster.node.pid)
    start = time.time() + args.load_start_delay
    window = (start + args.warmup, start + args.warmup + args.duration)
    loads = []
    for index in range(args.load_procs):
        tokens = cluster.tokens[index :: args.load_procs] or cluster.tokens
        token_file = state / f"tokens-{index}.json"
        token_file.write_text(json.dumps(tokens))
        token_file.chmod(0o600)
        share = args.in_flight // args.load_procs + (index < args.in_flight % args.load_procs)
        loads.append(
            await children.spawn(
                f"load-{count}-{index}",
                [
                    str(PEERS),
                    "load",
                    "--address",
                    cluster.endpoints["work"],
                    "--ca-file",
                    str(state / "certs" / "ca.pem"),
                    "--tokens",
                    str(token_file),
                    "--concurrency",
                    str(share),
                    "--start",
                    str(start),
                    "--warmup",
                    str(args.warmup),
                    "--duration",
                    str(args.duration),
                ],
                {},
                pipes=True,
            )
        )
    await asyncio.sleep(max(0.0, window[0] - time.time()))
    node_cpu = proc_cpu_seconds(cluster.node.pid)
    miners_before = await miners.stats()
    await asyncio.sleep(max(0.0, window[1] - time.time()))
    node_cpu = proc_cpu_seconds(cluster.node.pid) - node_cpu
    miners_after = await miners.stats()
    rss, hwm = proc_mem_mib(cluster.node.pid)
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    load_cpu = 0.0
    all_done = 0
    for load in loads:
        out, _ = await load.proc.communicate()
        if load.proc.returncode != 0 or not out:
            raise RuntimeError(f"{load.name} failed:\n{load.output_tail()}")
        result = json.loads(out)
        latencies.extend(result["latencies"])
        errors.update(result["errors"])
        load_cpu += result["cpu_s"]
        all_done += result["all_done"]
    backlog_s = await quiesce(cluster.node.pid, QUIESCE_TIMEOUT_S)
    step_cpu = proc_cpu_seconds(cluster.node.pid) - step_cpu
    served = sum(
        a["served"] - b["served"] for a, b in zip(miners_after, miners_before, strict=True)
    )
    miners_cpu = sum(
        a["cpu_s"] - b["cpu_s"] for a, b in zip(miners_after, miners_before, strict=True)
    )
    done = len(latencies)
    if done < 2:
        lost = count - sum(a["connected"] for a in miners_after)
        raise RuntimeError(
            f"only {done} requests completed with {count} miners: {dict(errors)}; the node "
            f"dropped {lost} miners (see its log; --keep-state keeps it)"
        )
    cuts = statistics.quantiles(latencies, n=100)
    total_s = args.warmup + args.duration
    if abs(served - done) > args.in_flight:
        print(f"  note: miners served {served} in the window, the load saw {done}", flush=True)
    return Row(
        miners=count,
        rps=done / args.duration,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=cuts[98] * 1000,
        errors=errors,
        rss_mib=rss,
        hwm_mib=hwm,
        cpu_us_per_req=node_cpu / done * 1e6,
        step_cpu_us_per_req=step_cpu / max(1, all_done) * 1e6,
        backlog_s=backlog_s,
        load_cpu_pct=load_cpu / total_s * 100,
        miners_cpu_pct=miners_cpu / args.duration * 100,
        lost=count - sum(a["connected"] for a in miners_after),
    )


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'miners':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
        f"{'RSS MiB':>8} {'HWM MiB':>8} {'node CPU us/req':>16} {'incl. backlog':>14} "
        f"{'backlog s':>10} {'load CPU%':>10} {'miners CPU%':>12} {'miners lost':>12}"
    )
    print(header)
    for r in rows:
        print(
            f"{r.miners:>6} {r.rps:>8.0f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} "
            f"{sum(r.errors.values()):>7} {r.rss_mib:>8.1f} {r.hwm_mib:>8.1f} "
            f"{r.cpu_us_per_req:>16.0f} {r.step_cpu_us_per_req:>14.0f} {r.backlog_s:>10.1f} "
            f"{r.load_cpu_pct:>10.0f} {r.miners_cpu_pct:>12.0f} {r.lost:>12}"
        )
    for r in rows:
        if r.errors:
            print(f"  errors with {r.miners} miners: {dict(r.errors)}")


async def run(args: argparse.Namespace) -> int:
    state = Path(tempfile.mkdtemp(prefix="cgn-node-scale-"))
    (state / "logs").mkdir()
    children = Children(state / "logs")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    rows: list[Row] = []
    print(
        f"node_scale: steps {args.steps} miners, {args.in_flight} requests in flight "
        f"({args.load_procs} load processes, {args.enterprises} enterprise accounts), "
        f"{args.miner_procs} miner processes, {args.slots} slots per miner, miner features "
        f"[{args.miner_features}], warm-up {args.warmup} s + {args.duration} s per step",
        flush=True,
    )
    print(
        f"Argon2id of the bench's accounts: t={ARGON2_TIME_COST}, "
        f"m={ARGON2_MEMORY_KIB} KiB, p={ARGON2_PARALLELISM} (Central's default: "
        "argon2-cffi's t=3, m=65536 KiB, p=4); node: CGN_NODE_ACCOUNT_LIMIT default (256), "
        f"CGN_NODE_QUEUE_DANGER_THRESHOLD={QUEUE_DANGER_THRESHOLD}, CGN_NODE_ACK_DEADLINE_MS="
        f"{args.ack_deadline_ms or 'default (500)'}",
        flush=True,
    )

    async def body() -> None:
        began = time.monotonic()
        cluster = await start_cluster(args, state, children)
        rss, _ = proc_mem_mib(cluster.node.pid)
        print(
            f"cluster up in {time.monotonic() - began:.1f} s; node pid {cluster.node.pid} "
            f"RSS {rss:.1f} MiB",
            flush=True,
        )
        miners = await MinerProcs.start(args, cluster, state, children)
        for count in args.steps:
            began = time.monotonic()
            row = await run_step(args, cluster, state, children, miners, count)
            rows.append(row)
            print(
                f"  {count} miners: {row.rps:.0f} req/s, p99 {row.p99_ms:.1f} ms, node RSS "
                f"{row.rss_mib:.1f} MiB (HWM {row.hwm_mib:.1f}), "
                f"step {time.monotonic() - began:.0f} s",
                flush=True,
            )

    task = asyncio.create_task(body())
    stopper = asyncio.create_task(stop.wait())
    status = 0
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            print("SIGTERM: stopping", flush=True)
            task.cancel()
            status = 1
        with contextlib.suppress(asyncio.CancelledError):
            await task
    except Exception as exc:
        print(f"node_scale failed: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        stopper.cancel()
        # The node first, while its miners can still answer its Drain; Central last.
        complaints = await children.stop_all(first=("node",))
        for complaint in complaints:
            print(f"cleanup: {complaint}", flush=True)
        if args.keep_state or status:
            print(f"state and logs kept in {state}", flush=True)
        else:
            shutil.rmtree(state, ignore_errors=True)
    if rows:
        print()
        print_table(rows)
        first, last = rows[0], rows[-1]
        print(
            f"throughput with {last.miners} miners / with {first.miners}: "
            f"{last.rps / first.rps:.2f} (target >= 0.80); node CPU per request "
            f"{last.cpu_us_per_req / first.cpu_us_per_req:.2f}x; node RSS with {last.miners} "
            f"miners {last.rss_mib:.1f} MiB, peak {max(r.hwm_mib for r in rows):.1f} MiB "
            "(target < 300)"
        )
        print(f"load average: {load_average()}")
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--steps", type=lambda s: [int(x) for x in s.split(",")], default=[2, 100, 1000]
    )
    parser.add_argument("--in-flight", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument(
        "--miner-features",
        default="answer_acks,batch",
        help="the optional protocol features the scripted miners use ('' for none)",
    )
    parser.add_argument("--enterprises", type=int, default=4)
    parser.add_argument("--miner-procs", type=int, default=2)
    parser.add_argument("--load-procs", type=int, default=2)
    parser.add_argument("--settle", type=float, default=1.0, help="seconds after miners join")
    parser.add_argument(
        "--load-start-delay", type=float, default=3.0, help="time for load processes to start"
    )
    parser.add_argument(
        "--ack-deadline-ms",
        type=int,
        default=DEFAULT_ACK_DEADLINE_MS,
        help="the node's ack deadline (CGN_NODE_ACK_DEADLINE_MS); 0: the node's default, "
        f"500 ms (default here: {DEFAULT_ACK_DEADLINE_MS})",
    )
    parser.add_argument(
        "--profile-node",
        default="",
        metavar="FILE",
        help="run the node under cProfile (main thread: its event loop), stats to FILE",
    )
    parser.add_argument("--keep-state", action="store_true")
    args = parser.parse_args()
    if args.in_flight > args.enterprises * 256:
        parser.error("more in flight than the enterprises' account limit (256 each) allows")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
