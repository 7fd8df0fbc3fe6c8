"""The peers bench/node_scale.py runs as child processes: scripted miners and the load.

``miners``: holds one MinerLinkService.Connect stream per miner account of its accounts file,
each on its own channel (its own TLS connection, as separate miners would have). It speaks the
protocol of docs/miner-protocol.md as ``miner/_link.py`` does, without a DService: each
WorkAssignment is answered at once with a WorkResponse carrying the body inline
(``body_complete``, with its WorkCompletion), then WorkSlots. With ``--features`` (default
``batch,answer_acks``, what the real miner lists and uses), the optional features the node
also lists are used as the real miner uses them: the answer acknowledges its assignment (no
Ack), and what queued up during a write goes out as one MinerBatch (so a unit's answer and its
WorkSlots are one message); ``--features ''`` speaks the base protocol (an Ack as each
assignment is read, then the answer, then WorkSlots, each its own message). It reads commands
on stdin, one a line: ``connect N`` (have the first N of its miners connected; answers
``connected N`` once each was welcomed), ``stats`` (answers a JSON line), ``quit``.

``load``: keeps ``--concurrency`` WorkService.Call requests in flight against the node's work
port with the given session tokens (dealt in turn to the workers), from ``--start`` (a
``time.time()``) until ``--start + --warmup + --duration``; prints one JSON line: the
latencies of the requests completed in the window after the warm-up, the errors by gRPC code
and its own CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generated.cgn.common.v1 import dservice_pb2, http_pb2
from generated.cgn.minerlink.v1 import miner_link_service_pb2 as pb
from generated.cgn.minerlink.v1 import miner_link_service_pb2_grpc as pb_grpc
from generated.cgn.work.v1 import work_service_pb2 as work_pb
from generated.cgn.work.v1 import work_service_pb2_grpc as work_grpc

#: A channel of its own per miner: gRPC shares one connection between channels of equal
#: arguments unless told to keep a local subchannel pool.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]
CALL_TIMEOUT_S = 30.0
BATCH, ANSWER_ACKS = "batch", "answer_acks"
#: What the real miner offers (miner/_link.py) and so these miners by default.
FEATURES = frozenset((BATCH, ANSWER_ACKS))
#: The most messages in one MinerBatch, as the real miner's writer.
MAX_BATCH = 64
STOP_GRACE_S = 35.0


def _read_json(path: str) -> Any:
    return json.loads(Path(path).read_text())


def _credentials(ca_file: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())


# --------------------------------------------------------------------------------------------
# Scripted miners
# --------------------------------------------------------------------------------------------


class ScriptedMiner:
    """One miner account's stream; ``welcomed`` is set once the node said Welcome.

    Like the real miner, it acks an assignment as soon as it reads it and answers after: one
    writer task sends queued acks (and pongs) before queued answers, so an ack never waits
    behind the answers to earlier assignments of a burst."""

    def __init__(
        self, miner_id: str, api_key: str, slots: int, features: frozenset[str] = FEATURES
    ) -> None:
        self.miner_id = miner_id
        self.api_key = api_key
        self.slots = slots
        #: The features this miner offers; of them, those the node's Welcome lists are used.
        self.features = features
        self._batch = False
        self._answer_acks = False
        self.welcomed = asyncio.Event()
        self.served = 0
        self.ended = ""
        self._urgent: collections.deque[pb.ConnectRequest | None] = collections.deque()
        self._answers: collections.deque[pb.ConnectRequest] = collections.deque()
        self._wake = asyncio.Event()

    async def run(self, address: str, credentials: grpc.ChannelCredentials) -> None:
        """Connects, then answers every node message until the stream ends."""
        async with grpc.aio.secure_channel(address, credentials, CHANNEL_OPTIONS) as channel:
            call: Any = pb_grpc.MinerLinkServiceStub(channel).Connect()
            hello = pb.MinerHello(
                miner_id=self.miner_id,
                api_key=self.api_key,
                dservices=[dservice_pb2.DServiceOffer(name="echo")],
                max_concurrent_work_units=self.slots,
                software_version="bench-node-scale",
                features=sorted(self.features & {BATCH}),
            )
            writer = asyncio.create_task(self._write(call))
            try:
                await call.write(pb.ConnectRequest(hello=hello))
                while (message := await call.read()) is not grpc.aio.EOF:
                    if not self._on_message(message):
                        break
                    if writer.done():
                        await writer  # raises what ended it
                self.ended = "EOF"
            except grpc.aio.AioRpcError as exc:
                self.ended = exc.code().name
            finally:
                writer.cancel()
                call.cancel()

    async def _write(self, call: Any) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._urgent or self._answers:
                taken: list[pb.ConnectRequest] = []
                while (self._urgent or self._answers) and len(taken) < MAX_BATCH:
                    message = self._urgent.popleft() if self._urgent else self._answers.popleft()
                    if message is None:  # drained: write what was taken, then half-close
                        await self._send(call, taken)
                        await call.done_writing()
                        return
                    taken.append(message)
                    if not self._batch:
                        break
                await self._send(call, taken)

    @staticmethod
    async def _send(call: Any, messages: list[pb.ConnectRequest]) -> None:
        if len(messages) > 1:
            await call.write(pb.ConnectRequest(batch=pb.MinerBatch(messages=messages)))
        elif messages:
            await call.write(messages[0])

    def _urgent_reply(self, message: pb.ConnectRequest | None) -> None:
        self._urgent.append(message)
        self._wake.set()

    def _on_message(self, message: pb.ConnectResponse) -> bool:
        kind = message.WhichOneof("kind")
        nonce = message.nonce
        if kind == "batch":
            return all(self._on_message(m) for m in message.batch.messages)
        if kind == "welcome":
            offered = self.features & set(message.welcome.features)
            self._batch = BATCH in offered
            self._answer_acks = ANSWER_ACKS in offered
            self.welcomed.set()
        elif kind == "assignment":
            work = message.assignment
            if not self._answer_acks:  # else the answer, sent at once, acknowledges it
                self._urgent_reply(pb.ConnectRequest(response_nonce=nonce, ack=pb.Ack()))
            response = pb.WorkResponse(
                dispatch_token=work.dispatch_token,
                head=http_pb2.HttpResponseHead(status_code=200, content_length=len(work.body)),
                body=work.body,
                body_complete=True,
                completion=pb.WorkCompletion(dispatch_token=work.dispatch_token),
            )
            self._answers.append(pb.ConnectRequest(response_nonce=nonce, response=response))
            free = pb.WorkSlots(free=self.slots)  # every unit is answered at once
            self._answers.append(pb.ConnectRequest(response_nonce=nonce, slots=free))
            self._wake.set()
            self.served += 1
        elif kind == "cancel":
            # Answered at once: nothing runs here, so nothing was spent.
            completion = pb.WorkCompletion(dispatch_token=message.cancel.dispatch_token)
            self._urgent_reply(pb.ConnectRequest(response_nonce=nonce, completion=completion))
        elif kind == "ping":
            self._urgent_reply(pb.ConnectRequest(response_nonce=nonce, pong=pb.Pong()))
        elif kind == "drain":
            self._urgent_reply(pb.ConnectRequest(response_nonce=nonce, ack=pb.Ack()))
            self._urgent_reply(pb.ConnectRequest(goodbye=pb.Goodbye(reason="drained")))
            self._urgent_reply(None)
        elif kind is not None:
            self._urgent_reply(pb.ConnectRequest(response_nonce=nonce, ack=pb.Ack()))
        return True


async def _serve_miners(args: argparse.Namespace) -> None:
    accounts: list[list[str]] = _read_json(args.accounts)
    credentials = _credentials(args.ca_file)
    features = frozenset(f for f in args.features.split(",") if f)
    miners = [ScriptedMiner(miner_id, key, args.slots, features) for miner_id, key in accounts]
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    try:
        while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
            command, _, value = line.partition(" ")
            if command == "connect":
                want = min(int(value), len(miners))
                for miner in miners[len(tasks) : want]:
                    tasks.append(asyncio.create_task(miner.run(args.address, credentials)))
                waits = [asyncio.ensure_future(m.welcomed.wait()) for m in miners[:want]]
                done, late = await asyncio.wait(waits, timeout=args.connect_timeout)
                for waiting in late:
                    waiting.cancel()
                ended = {m.ended for m in miners[:want] if m.ended}
                print(f"connected {len(done)} {','.join(sorted(ended))}", flush=True)
            elif command == "stats":
                served = sum(m.served for m in miners)
                connected = sum(m.welcomed.is_set() and not m.ended for m in miners)
                stats = {"served": served, "connected": connected, "cpu_s": time.process_time()}
                print(json.dumps(stats), flush=True)
            elif command == "quit":
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    tokens: list[str] = _read_json(args.tokens)
    credentials = _credentials(args.ca_file)
    channels = [grpc.aio.secure_channel(args.address, credentials, CHANNEL_OPTIONS) for _ in tokens]
    stubs = [work_grpc.WorkServiceStub(c) for c in channels]
    body = b"x" * args.body_bytes
    request = work_pb.CallRequest(
        dservice="echo",
        head=http_pb2.HttpRequestHead(method="POST", path="/bench/scale"),
        body=body,
    )
    window_start = args.start + args.warmup
    window_end = window_start + args.duration
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    all_done = 0

    async def worker(index: int) -> None:
        nonlocal all_done
        stub = stubs[index % len(stubs)]
        metadata = (("authorization", f"Bearer {tokens[index % len(tokens)]}"),)
        while (began := time.time()) < window_end:
            try:
                response = await stub.Call(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
                ok = response.head.status_code == 200 and response.body == body
                code = "" if ok else "BAD_ANSWER"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            ended = time.time()
            all_done += 1
            if window_start <= ended < window_end:
                if code:
                    errors[code] += 1
                else:
                    latencies.append(ended - began)
            elif code and began >= window_start:
                errors[code] += 1  # started in the window, answered only after it

    for channel in channels:
        await channel.channel_ready()
    await asyncio.sleep(max(0.0, args.start - time.time()))
    cpu_before = time.process_time()
    workers = [asyncio.create_task(worker(i)) for i in range(args.concurrency)]
    try:
        async with asyncio.timeout(args.warmup + args.duration + STOP_GRACE_S):
            await asyncio.gather(*workers)
    except TimeoutError:
        errors["UNFINISHED_AFTER_GRACE"] += sum(not w.done() for w in workers)
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for channel in channels:
            await channel.close()
    return {
        "latencies": latencies,
        "errors": dict(errors),
        "all_done": all_done,
        "cpu_s": time.process_time() - cpu_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=("miners", "load"))
    parser.add_argument("--address", required=True)
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--accounts", help="miners: JSON list of [miner_id, api_key]")
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument(
        "--features",
        default=",".join(sorted(FEATURES)),
        help="miners: the optional protocol features to offer and use ('' for none)",
    )
    parser.add_argument("--connect-timeout", type=float, default=120.0)
    parser.add_argument("--tokens", help="load: JSON list of session tokens")
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--body-bytes", type=int, default=64)
    parser.add_argument("--start", type=float, default=0.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    if args.role == "miners":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_miners(args))
    else:
        print(json.dumps(asyncio.run(_load(args))), flush=True)


if __name__ == "__main__":
    main()
