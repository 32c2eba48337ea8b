"""A quick load check of a live server on loopback: edit-to-peer latency, server CPU and memory.

    .venv/bin/python bench/quick_load.py --rooms 100 --clients 5 --rate 5 --seconds 10
    .venv/bin/python bench/quick_load.py --idle 1000

Starts ``python app.py`` on a free loopback port, opens ``rooms x clients`` versioned
connections, and has each client insert a timestamped token at ``rate`` edits a second (Poisson
arrivals) for ``seconds``. Every other member's receipt of a token gives one latency sample
(same process, one clock). Server CPU time and peak RSS come from ``/proc``. With ``--idle N``
it opens N idle connections instead and reports server memory per connection. All traffic stays
on 127.0.0.1 and the run ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent


def start_server(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "WARNING", "RATE_LIMIT_BURST": "100000"}
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        time.sleep(0.1)
    process.kill()
    raise SystemExit("server did not start")


def proc_stats(pid: int) -> tuple[float, int, int]:
    """CPU seconds, current RSS and peak RSS (KiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().split()
    cpu = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return cpu, int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


async def hello(url: str, client_id: str) -> tuple[ClientConnection, dict[str, Any]]:
    connection = await connect(url, max_size=None)
    await connection.send(json.dumps({"type": "hello", "client_id": client_id, "username": client_id, "version": None}))
    return connection, json.loads(await connection.recv())


async def typist(url: str, client_id: str, rate: float, stop: float, samples: list[float]) -> None:
    connection, welcome = await hello(url, client_id)
    version, length = welcome["version"], len(welcome["doc"])
    seq = 0

    async def read() -> None:
        nonlocal version, length
        async for raw in connection:
            message = json.loads(raw)
            if message["type"] != "update":
                continue
            # Every edit inserts one ASCII token, so the length follows without applying it.
            token = next(part[1] for part in message["changes"] if isinstance(part, list))
            version, length = message["version"], length + len(token)
            if message["client_id"] != client_id:
                samples.append(time.perf_counter() - float(token[1:]))

    reader = asyncio.create_task(read())
    while time.perf_counter() < stop:
        await asyncio.sleep(random.expovariate(rate))
        seq += 1
        token = f"T{time.perf_counter():.6f}"
        # A push against the last version seen: the server rebases it over what it missed.
        changes: list[Any] = [[0, token], length] if length else [[0, token]]
        await connection.send(json.dumps({"type": "push", "version": version, "seq": seq, "changes": changes}))
    await asyncio.sleep(1.0)
    reader.cancel()
    await connection.close()


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(fraction * (len(values) - 1)))] * 1000


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = start_server(port)
    try:
        if args.idle:
            return await idle(port, server.pid, args.idle)
        samples: list[float] = []
        cpu_before, _, _ = proc_stats(server.pid)
        stop = time.perf_counter() + args.seconds
        await asyncio.gather(
            *(
                typist(f"ws://127.0.0.1:{port}/ws/bench-{room}", f"c{room}-{i}", args.rate, stop, samples)
                for room in range(args.rooms)
                for i in range(args.clients)
            )
        )
        cpu_after, _, peak = proc_stats(server.pid)
        samples.sort()
        return {
            "clients": args.rooms * args.clients,
            "rooms": args.rooms,
            "edits_per_second_per_client": args.rate,
            "deliveries": len(samples),
            "p50_ms": round(percentile(samples, 0.5), 2),
            "p99_ms": round(percentile(samples, 0.99), 2),
            "max_ms": round(samples[-1] * 1000, 2),
            "server_cpu_percent": round((cpu_after - cpu_before) / (args.seconds + 1) * 100),
            "server_peak_rss_mib": round(peak / 1024, 1),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


async def idle(port: int, pid: int, count: int) -> dict[str, Any]:
    warm = [await hello(f"ws://127.0.0.1:{port}/ws/warm", f"w{i}") for i in range(10)]
    await asyncio.sleep(1)
    _, before, _ = proc_stats(pid)
    connections = [await hello(f"ws://127.0.0.1:{port}/ws/idle-{i // 5}", f"i{i}") for i in range(count)]
    await asyncio.sleep(2)
    _, after, _ = proc_stats(pid)
    for connection, _ in warm + connections:
        await connection.close()
    return {
        "idle_connections": count,
        "baseline_rss_mib": round(before / 1024, 1),
        "kib_per_connection": round((after - before) / count, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--clients", type=int, default=5, help="clients per room")
    parser.add_argument("--rate", type=float, default=5.0, help="edits a second per client")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--idle", type=int, default=0, help="measure memory of N idle connections instead")
    result = asyncio.run(run(parser.parse_args()))
    for key, value in result.items():
        print(f"{key:>30}  {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
