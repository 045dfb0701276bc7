"""Gateway overhead: added TTFT, CPU per proxied streaming request, max throughput on one core, memory over a soak.

    python bench/gateway_overhead.py [--tokens 16] [--token-interval-ms 2] [--rate 200] [--duration 15]
                                     [--concurrency 64] [--max-duration 10] [--soak 120] [--out FILE.json]
                                     [--peers vllm-router sglang-router --peer-bin VENV/bin]

Three processes on loopback: a fake engine (`EngineProto` below, raw asyncio: every request streams `--tokens` SSE
events `--token-interval-ms` apart, TTFT 0), the gateway (`lodestar.gateway.app`, pinned to CPU 0,
health checks every 2 s and `/metrics` scrapes every 50 ms as in production), and the load generator (this
process; a minimal HTTP/1.1 client on raw asyncio sockets with keep-alive, so that it costs little). The engine and
the load generator share CPU 1 when the machine has two CPUs.

1. Added TTFT: an open loop at `--rate` requests/s (evenly spaced) for `--duration` s, first straight to the
   engine, then through the gateway (`least-request`); TTFT = request sent -> first `data:` event received. Added
   TTFT = gateway percentile - direct percentile (p50, p99).
2. CPU per request: the gateway process's CPU time (user + system, from /proc) over the run / requests.
3. Closed loops of 32 and `--concurrency` clients for `--max-duration` s each, with `least-request` and with the
   learned `lodestar`; reports requests/s, CPU per request, the router's CPU use (1.0 = one core busy) and requests
   per CPU-second (what one fully busy core would sustain).
4. Soak: `--rate` requests/s for `--soak` s through the gateway; the gateway's RSS every 5 s.
5. `--peers`: the same phases 1-3 for peer routers (Rust, shipped as wheels: `pip install vllm-router sglang-router`
   in a separate venv whose bin directory is `--peer-bin`), pinned to the same CPU, so that the figures stand side
   by side from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


# ---- roles (each in its own process) -------------------------------------------------------------------------------
class EngineProto(asyncio.Protocol):
    """A minimal fake engine on raw asyncio (cheaper than any framework, so the gateway is what gets measured):
    POST -> `tokens` SSE events `interval` seconds apart (+ usage chunk, [DONE]), chunked; GET /health, /v1/models,
    /metrics -> small bodies. Keep-alive."""

    tokens = 16
    interval = 0.002
    EV = (b'data: {"id":"cmpl-b","object":"text_completion","created":1,"model":"fake-model","choices":[{"index":0,'
          b'"text":" tok","logprobs":null,"finish_reason":null}]}\n\n')  # fmt: skip
    END = (b'data: {"id":"cmpl-b","object":"text_completion","created":1,"model":"fake-model","choices":[],'
           b'"usage":{"prompt_tokens":75,"completion_tokens":16,"total_tokens":91}}\n\ndata: [DONE]\n\n')  # fmt: skip
    GETS = {b"/health": b"", b"/v1/models": b'{"object":"list","data":[{"id":"fake-model","object":"model"}]}',
            b"/metrics": b'vllm:num_requests_running{model_name="m"} 1\nvllm:num_requests_waiting{model_name="m"} 0\n'
                         b'vllm:kv_cache_usage_perc{model_name="m"} 0.1\n'}  # fmt: skip

    def connection_made(self, transport: Any) -> None:
        self.t = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = self.buf[:i]
            n = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    n = int(line[15:])
            if len(self.buf) < i + 4 + n:
                return
            self.buf = self.buf[i + 4 + n :]
            method, path = head.split(b" ", 2)[:2]
            if method == b"GET":
                body = self.GETS.get(path, b"")
                self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
            else:
                self.t.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                self.send(0)

    def send(self, i: int) -> None:
        if self.t.is_closing():
            return
        if i < self.tokens:
            self.t.write(b"%x\r\n%b\r\n" % (len(self.EV), self.EV))
            if self.interval:
                asyncio.get_running_loop().call_later(self.interval, self.send, i + 1)
            else:
                self.send(i + 1)
        else:
            self.t.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(self.END), self.END))


def role_backend(port: int, tokens: int, interval_ms: float) -> None:
    EngineProto.tokens, EngineProto.interval = tokens, interval_ms / 1000

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(EngineProto, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    _run(main())


def _run(coro: Any) -> None:
    from lodestar.gateway.app import run_loop

    run_loop(coro)


def role_gateway(port: int, backend: str, policy: str) -> None:
    from lodestar.gateway.app import run
    from lodestar.gateway.config import build_config
    from lodestar.gateway.observability import setup_logging

    setup_logging("warning")
    run(build_config({}, {"port": port, "backends": [{"url": backend, "id": "e0"}], "policy": policy}))


# ---- load generator --------------------------------------------------------------------------------------------------
class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time; knows when a chunked response ends."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.buf = b""
        self.t0 = 0.0
        self.ttft: float | None = None
        self.done: asyncio.Future[float] | None = None
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, data: bytes) -> asyncio.Future[float]:
        self.buf, self.ttft = b"", None
        self.done = asyncio.get_running_loop().create_future()
        self.t0 = time.perf_counter()
        self.transport.write(data)
        return self.done

    def data_received(self, data: bytes) -> None:
        if self.ttft is None and b"data: {" in data:
            self.ttft = time.perf_counter() - self.t0
        self.buf = (self.buf + data)[-16:]
        if self.buf.endswith(b"\r\n0\r\n\r\n") and self.done is not None and not self.done.done():
            self.done.set_result(time.perf_counter() - self.t0)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("closed"))


class Load:
    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[Conn] = []
        body = json.dumps({"model": "fake-model", "prompt": "Say something. " * 20, "stream": True}).encode()
        self.req = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
        self.ttfts: list[float] = []
        self.errors = 0

    async def one(self) -> None:
        conn = self.idle.pop() if self.idle else None
        if conn is None or conn.closed:
            _, conn = await asyncio.get_running_loop().create_connection(Conn, "127.0.0.1", self.port)
        try:
            await asyncio.wait_for(conn.send(self.req), 30)
        except (ConnectionError, TimeoutError):
            self.errors += 1
            return
        if conn.ttft is not None:
            self.ttfts.append(conn.ttft)
        self.idle.append(conn)

    async def open_loop(self, rate: float, duration: float) -> float:
        n = int(rate * duration)
        t0 = time.perf_counter()
        tasks = []
        for i in range(n):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.one()))
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0

    async def closed_loop(self, conc: int, duration: float) -> int:
        end = time.perf_counter() + duration
        count = 0

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < end:
                await self.one()
                count += 1

        await asyncio.gather(*[worker() for _ in range(conc)])
        return count


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


# Peer routers for a side-by-side figure (`--peers`): command templates, run from `--peer-bin` (a venv's bin with
# `pip install vllm-router sglang-router`; both are Rust routers shipped as wheels). Round-robin over one engine.
PEERS = {
    "vllm-router": ["{bin}/vllm-router", "--host", "127.0.0.1", "--port", "{port}", "--worker-urls", "{backend}",
                    "--policy", "round_robin", "--log-level", "warning"],
    "sglang-router": ["{bin}/python", "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", "{port}",
                      "--worker-urls", "{backend}", "--policy", "round_robin", "--log-level", "warn"],
}  # fmt: skip


def spawn_peer(cmd: list[str], bin_dir: str, port: int, backend: str, cpu: int | None) -> subprocess.Popen[bytes]:
    args = [c.format(bin=bin_dir, port=port, backend=backend) for c in cmd]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_pin(cpu))


def spawn(args: list[str], cpu: int | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args], preexec_fn=_pin(cpu))


def _pin(cpu: int | None) -> Any:
    """Pins the child before it execs, so every thread it starts (tokio's workers too) stays on that CPU."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


async def wait_ready(port: int, path: str) -> None:
    for _ in range(200):
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            line = await r.readline()
            w.close()
            if b" 200 " in line:
                return
        except OSError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"port {port} never became ready")


async def bench(a: argparse.Namespace) -> dict[str, Any]:
    ncpu = os.cpu_count() or 1
    gw_cpu, other_cpu = (0, 1) if ncpu >= 2 else (None, None)
    if other_cpu is not None:
        os.sched_setaffinity(0, {other_cpu})
    bport, gport = 18431, 18432
    backend = spawn(["--role", "backend", "--port", str(bport), "--tokens", str(a.tokens),
                     "--token-interval-ms", str(a.token_interval_ms)], other_cpu)  # fmt: skip
    out: dict[str, Any] = {"machine": {"cpus": ncpu, "python": platform.python_version(), "cpu": platform.processor()
                                       or platform.machine()}, "tokens": a.tokens,
                           "token_interval_ms": a.token_interval_ms}  # fmt: skip
    procs = [backend]
    try:
        await wait_ready(bport, "/health")
        direct = Load(bport)
        await direct.open_loop(a.rate, 2)  # warm-up
        direct.ttfts.clear()
        await direct.open_loop(a.rate, a.duration)
        routers = [("least-request", None), ("lodestar", None)] + [(name, PEERS[name]) for name in a.peers]
        for policy, peer_cmd in routers:
            if peer_cmd is None:
                gw = spawn(["--role", "gateway", "--port", str(gport), "--backend", f"http://127.0.0.1:{bport}",
                            "--policy", policy], gw_cpu)  # fmt: skip
            else:
                gw = spawn_peer(peer_cmd, a.peer_bin, gport, f"http://127.0.0.1:{bport}", gw_cpu)
            procs.append(gw)
            await wait_ready(gport, "/ready" if peer_cmd is None else "/health")
            via = Load(gport)
            await via.open_loop(a.rate, 2)
            res: dict[str, Any] = {}
            if policy != "lodestar":
                via.ttfts.clear()
                c0 = cpu_s(gw.pid)
                await via.open_loop(a.rate, a.duration)
                c1 = cpu_s(gw.pid)
                n = len(via.ttfts)
                res["ttft_ms"] = {
                    "direct_p50": 1e3 * pct(direct.ttfts, 0.5), "direct_p99": 1e3 * pct(direct.ttfts, 0.99),
                    "gateway_p50": 1e3 * pct(via.ttfts, 0.5), "gateway_p99": 1e3 * pct(via.ttfts, 0.99),
                    "added_p50": 1e3 * (pct(via.ttfts, 0.5) - pct(direct.ttfts, 0.5)),
                    "added_p99": 1e3 * (pct(via.ttfts, 0.99) - pct(direct.ttfts, 0.99)),
                    "requests": n, "errors": via.errors + direct.errors,
                }  # fmt: skip
                res["cpu_ms_per_request_at_rate"] = 1e3 * (c1 - c0) / max(1, n)
            for conc in sorted({32, a.concurrency}):
                c0, t0 = cpu_s(gw.pid), time.perf_counter()
                n = await via.closed_loop(conc, a.max_duration)
                c1, t1 = cpu_s(gw.pid), time.perf_counter()
                res["max" if conc == a.concurrency else f"closed_{conc}"] = {
                    "concurrency": conc, "req_per_s": n / (t1 - t0), "gateway_cpu_use": (c1 - c0) / (t1 - t0),
                    "req_per_cpu_s": n / max(1e-9, c1 - c0), "cpu_ms_per_request": 1e3 * (c1 - c0) / n,
                    "errors": via.errors}  # fmt: skip
            if policy == "least-request" and a.soak > 0:
                rss = []
                t_end = time.perf_counter() + a.soak
                while time.perf_counter() < t_end:
                    await via.open_loop(a.rate, 5)
                    rss.append(round(rss_mb(gw.pid), 1))
                half = len(rss) // 2
                res["soak"] = {"seconds": a.soak, "rate": a.rate, "rss_mb_every_5s": rss,
                               "rss_growth_mb_second_half": rss[-1] - rss[half] if rss else None}  # fmt: skip
            out[policy] = res
            gw.terminate()
            gw.wait(10)
            procs.remove(gw)
            print(json.dumps({policy: res}, indent=1), flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=["backend", "gateway"])
    ap.add_argument("--port", type=int)
    ap.add_argument("--backend")
    ap.add_argument("--policy", default="least-request")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--token-interval-ms", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-duration", type=float, default=10.0)
    ap.add_argument("--soak", type=float, default=120.0)
    ap.add_argument("--peers", nargs="*", default=[], choices=sorted(PEERS), help="peer routers to measure too")
    ap.add_argument("--peer-bin", default="", help="bin directory of a venv with the peer routers installed")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.role == "backend":
        return role_backend(a.port, a.tokens, a.token_interval_ms)
    if a.role == "gateway":
        return role_gateway(a.port, a.backend, a.policy)
    res: dict[str, Any] = {}

    async def go() -> None:
        res.update(await bench(a))

    _run(go())
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
