"""Side-by-side benchmark of openim-callback-gateway (issue #12). Run it through bench/run.sh, which
installs the tools and builds every binary first; this file only starts servers, drives the load,
and prints the table.

Systems, all on loopback and each in front of a fresh process of the same trivial upstream
(bench/upstream):
  null          Go net/http answering the fixed continue envelope (the HTTP floor)
  direct        h2load posting the gRPC request straight to the upstream (the gRPC floor)
  gateway       target/release/openim-callback-gateway (spool or sync delivery for the after command)
  grpc-gateway  the grpc-gateway v2 peer, bench/peers/grpc-gateway (no OpenIM envelope: a lower bound)
  python        the aiohttp + grpcio peer, bench/peers/python/gateway.py

Every server this script starts is stopped on exit, on an error and on SIGINT/SIGTERM. A system
that fails is reported as failed in its row; the others still run.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.join(HERE, ".bin")
CLK_TCK = os.sysconf("SC_CLK_TCK")

BEFORE = "callbackBeforeCreateGroupCommand"
AFTER = "callbackAfterQuitGroupCommand"
RPC = {BEFORE: "BeforeCreateGroup", AFTER: "AfterQuitGroup"}
SERVICE = "openim.callback.v1.GroupCallbackService"
CONCURRENCY = (1, 16, 64)

# (system, command, label) in table order.
ROWS = [
    ("null", BEFORE, "null HTTP server"),
    ("direct", BEFORE, "direct gRPC (h2load)"),
    ("gateway", BEFORE, "**gateway**"),
    ("grpc-gateway", BEFORE, "grpc-gateway v2.33 (no envelope: lower bound)"),
    ("python", BEFORE, "Python aiohttp + grpcio"),
    ("null", AFTER, "null HTTP server"),
    ("direct", AFTER, "direct gRPC (h2load)"),
    ("gateway-spool", AFTER, "**gateway**, delivery: spool"),
    ("gateway-sync", AFTER, "**gateway**, delivery: sync"),
    ("grpc-gateway", AFTER, "grpc-gateway v2.33 (no envelope: lower bound)"),
    ("python", AFTER, "Python aiohttp + grpcio (sync)"),
]

CONTINUE = '{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}'


class Failed(Exception):
    """A system could not be measured; the message goes into its row."""

    def __str__(self):
        return " ".join(super().__str__().split())


# ---------------------------------------------------------------------------------------------
# processes


class Procs:
    """Every process started, so that all of them are stopped whatever happens."""

    def __init__(self):
        self.live = []

    def start(self, name, argv, log_dir, env=None, stdin=None):
        path = os.path.join(log_dir, f"{name}.log")
        with open(path, "ab") as log:  # the child keeps its own descriptor
            p = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE if stdin else log,
                stderr=log,
                stdin=stdin,
                env={**os.environ, **(env or {})},
                cwd=ROOT,
            )
        p.bench_name = name
        p.bench_log = path
        self.live.append(p)
        pidfile = os.environ.get("BENCH_PIDFILE")
        if pidfile:  # bench/run.sh's EXIT trap stops these should this script itself be killed
            with open(pidfile, "a") as f:
                f.write(f"{p.pid}\n")
        return p

    def stop(self, p):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.live:
            self.live.remove(p)

    def stop_all(self):
        for p in list(self.live):
            self.stop(p)


PROCS = Procs()


def on_signal(signum, _frame):
    PROCS.stop_all()
    sys.exit(128 + signum)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise Failed(f"{proc.bench_name} exited with {proc.returncode}: {tail(proc.bench_log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise Failed(f"{proc.bench_name} did not listen on {port} within {timeout}s: {tail(proc.bench_log)}")


def tail(path, n=400):
    try:
        with open(path, "rb") as f:
            data = f.read()[-n:].decode(errors="replace").strip()
        return data.replace("\n", " | ") or "(no output)"
    except OSError:
        return "(no log)"


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_model():
    with open("/proc/cpuinfo") as f:
        return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# ---------------------------------------------------------------------------------------------
# systems


class System:
    """One running system under test: its process, its upstream, where to send load."""

    def __init__(self, name, command, ctx):
        self.name, self.command, self.ctx = name, command, ctx
        self.procs = []
        self.upstream = None
        self.server = None  # process whose RSS and CPU are reported
        self.url = None
        self.tool = "wrk"
        self.stats_port = None

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for p in reversed(self.procs):
            PROCS.stop(p)

    def _start(self, name, argv, port, env=None):
        p = PROCS.start(name, argv, self.ctx.logs, env=env)
        self.procs.append(p)
        wait_port(port, p)
        return p

    def start_upstream(self):
        port, self.stats_port = free_port(), free_port()
        self.upstream = self._start(
            "upstream",
            [f"{BIN}/upstream", "-addr", f"127.0.0.1:{port}", "-stats", f"127.0.0.1:{self.stats_port}"],
            port,
        )
        wait_port(self.stats_port, self.upstream)
        return port

    def upstream_count(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/count", timeout=2) as r:
            return json.load(r)

    def start(self):
        up = self.start_upstream()
        port = free_port()
        n = self.name
        if n == "null":
            self.server = self._start("null", [f"{BIN}/null", "-addr", f"127.0.0.1:{port}"], port)
            self.url = f"http://127.0.0.1:{port}/callbackExample/{self.command}"
        elif n == "direct":
            self.server = self.upstream
            self.tool = "h2load"
            self.url = f"http://127.0.0.1:{up}/{SERVICE}/{RPC[self.command]}"
        elif n.startswith("gateway"):
            delivery = "sync" if n == "gateway-sync" else "spool"
            cfg = self.ctx.gateway_config(delivery)
            self.server = self._start(
                n,
                [
                    self.ctx.gateway_bin,
                    "--config",
                    cfg,
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--upstream",
                    f"http://127.0.0.1:{up}",
                ],
                port,
            )
            self.url = f"http://127.0.0.1:{port}/callbackExample/{self.command}"
        elif n == "grpc-gateway":
            self.server = self._start(
                n, [f"{BIN}/grpc-gateway", "-addr", f"127.0.0.1:{port}", "-upstream", f"127.0.0.1:{up}"], port
            )
            self.url = f"http://127.0.0.1:{port}/{SERVICE}/{RPC[self.command]}"
        elif n == "python":
            self.server = self._start(
                n,
                [
                    self.ctx.python,
                    os.path.join(HERE, "peers/python/gateway.py"),
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--upstream",
                    f"127.0.0.1:{up}",
                ],
                port,
            )
            self.url = f"http://127.0.0.1:{port}/callbackExample/{self.command}"
        else:
            raise Failed(f"unknown system {n}")
        self.check()

    def check(self):
        """One request by hand: the answer must be what this system should say."""
        if self.tool == "h2load":
            out = subprocess.run(
                [
                    "nghttp",
                    "-v",
                    "-d",
                    self.ctx.grpc_body[self.command],
                    "-H",
                    "content-type: application/grpc",
                    "-H",
                    "te: trailers",
                    self.url,
                ],
                check=False,
                capture_output=True,
                timeout=10,
            )
            text = out.stdout.decode(errors="replace")
            if ":status: 200" not in text or "grpc-status: 0" not in text:
                raise Failed(f"direct gRPC check: no 200 with grpc-status 0: {text[-300:]}")
            return
        req = urllib.request.Request(
            self.url,
            data=self.ctx.json_body_bytes[self.command],
            method="POST",
            headers={"Content-Type": "application/json; charset=utf-8", "Operationid": "1719800000123453781"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, body = r.status, r.read().decode(errors="replace")
        except Exception as e:  # any failure of the check fails the row
            raise Failed(f"{self.name} check request failed: {e}") from e
        want = "{}" if self.name == "grpc-gateway" else CONTINUE
        if status != 200 or body.strip() != want:
            raise Failed(f"{self.name} check: HTTP {status} {body[:200]!r}, wanted {want}")

    def load(self, c, seconds):
        """Runs one closed-loop load at concurrency c; returns the measured figures, with the load
        generator's own CPU per request (the only child that ends meanwhile, so RUSAGE_CHILDREN's
        difference is its CPU)."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = self._load(c, seconds)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        r["client_cpu_us"] = used * 1e6 / max(r["requests"], 1)
        return r

    def _load(self, c, seconds):
        threads = str(min(c, 2))
        if self.tool == "h2load":
            log = os.path.join(self.ctx.tmp, f"h2load-{self.command}-{c}.log")
            if os.path.exists(log):
                os.remove(log)
            argv = [
                "h2load",
                "-D",
                str(seconds),
                "-c",
                str(c),
                "-m",
                "1",
                "-t",
                threads,
                "-d",
                self.ctx.grpc_body[self.command],
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                f"--log-file={log}",
                self.url,
            ]
            out = subprocess.run(argv, check=False, capture_output=True, timeout=seconds + 30)
            text = out.stdout.decode(errors="replace")
            if out.returncode != 0:
                raise Failed(f"h2load exited {out.returncode}: {text[-300:]} {out.stderr.decode()[-300:]}")
            lat, bad = [], 0
            with open(log) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3 and parts[1] == "200":
                        lat.append(int(parts[2]))
                    else:
                        bad += 1
            if not lat:
                raise Failed(f"h2load: no 200 responses: {text[-300:]}")
            lat.sort()

            def pct(p):
                return lat[min(len(lat) - 1, int(p / 100 * len(lat)))]

            return {
                "requests": len(lat),
                "rps": len(lat) / seconds,
                "p50": pct(50),
                "p99": pct(99),
                "p999": pct(99.9),
                "errors": bad,
            }
        argv = [
            "wrk",
            "-t",
            threads,
            "-c",
            str(c),
            "-d",
            f"{seconds}s",
            "--timeout",
            "5s",
            "-s",
            os.path.join(HERE, "wrk/post.lua"),
            self.url,
            "--",
            self.ctx.json_body[self.command],
        ]
        out = subprocess.run(argv, check=False, capture_output=True, timeout=seconds + 30)
        text = out.stdout.decode(errors="replace")
        line = next((ln for ln in text.splitlines() if ln.startswith("WRKJSON ")), None)
        if out.returncode != 0 or line is None:
            raise Failed(f"wrk exited {out.returncode}: {text[-300:]} {out.stderr.decode()[-300:]}")
        w = json.loads(line[len("WRKJSON ") :])
        errors = w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"]
        good = w["requests"] - w["status"]
        return {
            "requests": w["requests"],
            "rps": good / (w["duration_us"] / 1e6),
            "p50": w["p50"],
            "p99": w["p99"],
            "p999": w["p999"],
            "errors": errors,
            "status": w["status"],
        }

    def warmup(self, seconds):
        if seconds > 0:
            self.load(16, seconds)


def measure_row(ctx, name, command):
    """Starts the system, warms it up, runs c=1, 16, 64; returns {c: figures, 'rss_kib': …}."""
    res = {}
    key = "after" if command == AFTER else "before"
    spooled = name == "gateway-spool"
    with System(name, command, ctx) as s:
        s.warmup(ctx.warmup)
        if spooled:
            drain(s, key, s.upstream_count()[key], 0, time.time())  # the warm-up's backlog
        for c in CONCURRENCY:
            if s.server.poll() is not None:
                raise Failed(f"{name} died: {tail(s.server.bench_log)}")
            t0 = (cpu_ticks(s.server.pid), cpu_ticks(s.upstream.pid))
            d0 = s.upstream_count()
            r = s.load(c, ctx.duration)
            d1 = s.upstream_count()
            if spooled:
                # Until the upstream has every event acknowledged in this run (CPU counted through
                # the drain: a spooled ack's cost includes its delivery).
                r["delivered_in_run"] = d1[key] - d0[key]
                r["drain_s"] = drain(s, key, d0[key], r["requests"] - r.get("status", 0), time.time())
            t1 = (cpu_ticks(s.server.pid), cpu_ticks(s.upstream.pid))
            n = max(r["requests"], 1)
            r["cpu_us"] = (t1[0] - t0[0]) / CLK_TCK * 1e6 / n
            r["upstream_cpu_us"] = (t1[1] - t0[1]) / CLK_TCK * 1e6 / n
            if name == "direct":
                r["upstream_cpu_us"] = 0.0  # the upstream is the server under test
            r["upstream_calls_per_s"] = (d1[key] - d0[key]) / ctx.duration
            res[c] = r
        res["rss_kib"] = status_kib(s.server.pid, "VmHWM")
        res["upstream_rss_kib"] = status_kib(s.upstream.pid, "VmHWM")
    return res


def drain(s, key, start, acked, t_end, cap=60.0):
    """Seconds from t_end until the upstream counted `acked` deliveries since `start` (or, with
    acked 0, until its count stopped moving for 1 s); `cap` if it never gets there."""
    last, still = None, time.time()
    while time.time() - t_end < cap:
        cur = s.upstream_count()[key]
        if acked and cur - start >= acked:
            return time.time() - t_end
        if cur != last:
            last, still = cur, time.time()
        elif time.time() - still > (1.0 if not acked else 5.0):
            return (still - t_end) if not acked else cap  # stalled short of the acks
        time.sleep(0.05)
    return cap


# ---------------------------------------------------------------------------------------------
# idle connections and the spool


def idle_rss(ctx, name, n=1000):
    with System(name, BEFORE, ctx) as s:
        before = status_kib(s.server.pid, "VmRSS")
        path = "/" + s.url.split("/", 3)[3]
        p = PROCS.start(
            "idleconns",
            [
                f"{BIN}/idleconns",
                "-addr",
                s.url.split("/")[2],
                "-path",
                path,
                "-body",
                ctx.json_body[BEFORE],
                "-n",
                str(n),
                "-hold",
                "60s",
            ],
            ctx.logs,
            stdin=subprocess.PIPE,
        )
        try:
            line = p.stdout.readline().decode().strip()
            if not line.startswith("ready"):
                raise Failed(f"idleconns: {line or tail(p.bench_log)}")
            time.sleep(1.0)
            with_conns = status_kib(s.server.pid, "VmRSS")
            hwm = status_kib(s.server.pid, "VmHWM")
        finally:
            p.stdin.close()
            PROCS.stop(p)
    return {"rss_before_kib": before, "rss_idle_kib": with_conns, "hwm_kib": hwm, "connections": n}


def spool_run(ctx, backend):
    """Open-loop after-events at a fixed rate into the spooled gateway; ack latency, acks/s, delivery."""
    with System("gateway-spool", AFTER, ctx) if backend == "redb" else _backend_system(ctx, backend) as s:
        d0 = s.upstream_count()["after"]
        c0 = cpu_ticks(s.server.pid)
        argv = [
            f"{BIN}/openloop",
            "-url",
            s.url,
            "-body",
            ctx.json_body[AFTER],
            "-rate",
            str(ctx.spool_rate),
            "-duration",
            f"{ctx.spool_seconds}s",
            "-warmup",
            f"{ctx.warmup}s",
            "-conns",
            str(ctx.spool_conns),
        ]
        t_start = time.time()
        out = subprocess.run(argv, check=False, capture_output=True, timeout=ctx.spool_seconds + 60)
        if out.returncode != 0:
            raise Failed(f"openloop exited {out.returncode}: {out.stderr.decode()[-300:]}")
        r = json.loads(out.stdout)
        t_acked = time.time()
        c1 = cpu_ticks(s.server.pid)
        at_end = s.upstream_count()["after"]
        # Wait for the backlog to drain: until the upstream's count stops moving for 1 s (max 30 s).
        last, still, deadline = at_end, time.time(), time.time() + 30
        while time.time() < deadline:
            time.sleep(0.25)
            cur = s.upstream_count()["after"]
            if cur != last:
                last, still = cur, time.time()
            elif time.time() - still > 1.0:
                break
        delivered = last - d0
        r["backlog_at_end"] = max(0, (r["ok"] + r.get("warmup_sent", 0)) - (at_end - d0))
        r["delivered"] = delivered
        r["drain_s"] = max(0.0, still - t_acked)
        r["delivered_per_s"] = delivered / max(still - t_start, 1e-9)
        r["cpu_us_per_event"] = (c1 - c0) / CLK_TCK * 1e6 / max(r["sent"], 1)
        r["rss_kib"] = status_kib(s.server.pid, "VmHWM")
        r["backend"] = backend
    return r


def _backend_system(ctx, backend):
    if backend != "redis":
        raise Failed(f"unknown spool backend {backend!r} (known: redb, redis)")
    # Hook for the second spool backend (spool.backend: redis, spool.redis.url). A gateway that does
    # not know the keys refuses the config, and this row says so.
    ctx.extra_spool = {"backend": "redis", "redis": {"url": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")}}
    return System("gateway-spool", AFTER, ctx)


# ---------------------------------------------------------------------------------------------
# context, table


class Ctx:
    def __init__(self, args):
        self.quick = args.quick
        self.rounds = args.rounds or (1 if args.quick else 3)
        self.duration = args.duration or (2 if args.quick else 5)
        self.warmup = 1  # whole seconds: wrk and h2load take no fractions
        self.spool_rate = args.spool_rate
        self.spool_seconds = 3 if args.quick else 10
        self.spool_conns = args.spool_conns
        self.spool_backends = [b for b in args.spool_backend.split(",") if b]
        self.gateway_bin = args.gateway
        self.python = args.python
        self.only = set(args.only.split(",")) if args.only else None
        self.tmp = tempfile.mkdtemp(prefix="openim-bench-")
        self.logs = os.path.join(self.tmp, "logs")
        os.makedirs(self.logs)
        self.extra_spool = {}
        self.json_body, self.json_body_bytes, self.grpc_body = {}, {}, {}
        payloads = args.payloads
        for cmd in (BEFORE, AFTER):
            src = os.path.join(payloads, f"{cmd}.json")
            with open(src) as f:
                compact = json.dumps(json.load(f), separators=(",", ":"), ensure_ascii=False) + "\n"
            path = os.path.join(self.tmp, f"{cmd}.json")
            with open(path, "w") as f:
                f.write(compact)  # what Go's encoding/json Encoder sends: compact, trailing newline
            self.json_body[cmd], self.json_body_bytes[cmd] = path, compact.encode()
            gpath = os.path.join(self.tmp, f"{cmd}.grpc")
            subprocess.run([f"{BIN}/grpcbody", cmd, path, gpath], check=True, capture_output=True)
            self.grpc_body[cmd] = gpath
        self.configs = {}

    def gateway_config(self, delivery):
        spool_dir = tempfile.mkdtemp(prefix="spool-", dir=self.tmp)
        path = os.path.join(self.tmp, f"gateway-{delivery}-{os.path.basename(spool_dir)}.yaml")
        spool = {"dir": spool_dir, **self.extra_spool}
        cfg = {"log": {"filter": "warn"}, "spool": spool, "commands": {AFTER: {"delivery": delivery}}}
        with open(path, "w") as f:
            json.dump(cfg, f)  # JSON is YAML
        return path


def kfmt(x):
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def cell(figs):
    if figs is None:
        return "failed"
    out = f"{kfmt(figs['rps'])}, {figs['p50']:.0f}/{figs['p99']:.0f}/{figs['p999']:.0f}"
    if figs.get("errors"):
        out += f" ({figs['errors']:.0f} errors)"
    return out


def median_row(rounds):
    """Medians over rounds of every figure; None when no round succeeded."""
    ok = [r for r in rounds if isinstance(r, dict)]
    if not ok:
        return None
    out = {}
    for c in CONCURRENCY:
        out[c] = {k: statistics.median(r[c][k] for r in ok) for k in ok[0][c]}
    out["rss_kib"] = statistics.median(r["rss_kib"] for r in ok)
    out["upstream_rss_kib"] = statistics.median(r["upstream_rss_kib"] for r in ok)
    out["rounds"] = len(ok)
    return out


def render(ctx, results, failures, idle, spool, meta):
    L = []
    L.append(f"# openim-callback-gateway side-by-side benchmark ({'quick' if ctx.quick else 'full'} run)")
    L.append("")
    L.append(
        f"{meta['date']} · {meta['cpu']} · {meta['nproc']} cores · {meta['kernel']} · tree {meta['git']}, gateway binary built {meta['gateway_built']}"
    )
    L.append(
        f"`{meta['command']}` · {ctx.rounds} round(s), interleaved, medians · {ctx.duration} s per run after "
        f"{ctx.warmup} s warm-up at c=16 · load average before {meta['load_before']}, after {meta['load_after']}"
    )
    L.append("")
    L.append(
        "Each cell: requests/s, p50/p99/p99.9 latency in µs. Concurrency c = connections with one request in "
        "flight each (wrk -c c, HTTP/1.1 keep-alive; h2load -c c -m 1, one stream per HTTP/2 connection). "
        "Peak RSS = VmHWM of the server under test over the row; CPU = its utime+stime per request at c=16, "
        "(+ the upstream's). The load generator runs on the same cores."
    )
    L.append("")
    L.append("| system | command | c=1 | c=16 | c=64 | peak RSS MiB | CPU µs/req (c=16) |")
    L.append("|---|---|---|---|---|---|---|")
    for name, cmd, label in ROWS:
        key = (name, cmd)
        if key not in results:
            continue
        m = results[key]
        short = cmd.replace("callback", "").replace("Command", "")
        if m is None:
            L.append(f"| {label} | {short} | failed: {' '.join(failures.get(key, '?').split())[:160]} | | | | |")
            continue
        cpu = f"{m[16]['cpu_us']:.0f}"
        if m[16]["upstream_cpu_us"] > 0:
            cpu += f" (+{m[16]['upstream_cpu_us']:.0f})"
        L.append(
            f"| {label} | {short} | {cell(m[1])} | {cell(m[16])} | {cell(m[64])} | {m['rss_kib'] / 1024:.1f} | {cpu} |"
        )
    sp = results.get(("gateway-spool", AFTER))
    if sp:
        L.append("")
        L.append(
            "gateway, delivery: spool: upstream deliveries/s during the c=1/16/64 runs: "
            + "/".join(kfmt(sp[c]["upstream_calls_per_s"]) for c in CONCURRENCY)
            + " (fewer than the acks: a backlog grows; its delivery CPU is counted in the gateway's)."
        )
    L.append("")

    def ratio(a, b, c):
        if a is None or b is None or not b[c]["rps"]:
            return "n/a"
        return f"{a[c]['rps'] / b[c]['rps']:.2f}×"

    L.append("Throughput ratios (requests/s):")
    L.append("")
    L.append("| ratio | command | c=1 | c=16 | c=64 |")
    L.append("|---|---|---|---|---|")
    for gw, cmd in (("gateway", BEFORE), ("gateway-sync", AFTER), ("gateway-spool", AFTER)):
        g = results.get((gw, cmd))
        if (gw, cmd) not in results:
            continue
        short = cmd.replace("callback", "").replace("Command", "")
        for peer in ("direct", "grpc-gateway", "python"):
            if (peer, cmd) not in results:
                continue
            p = results.get((peer, cmd))
            L.append(f"| {gw}/{peer} | {short} | " + " | ".join(ratio(g, p, c) for c in CONCURRENCY) + " |")
    L.append("")
    L.extend(goals(ctx, results))
    L.append("")
    if idle:
        L.append("Idle keep-alive connections (each made one BeforeCreateGroup request, then idles):")
        L.append("")
        L.append("| system | connections | RSS before MiB | RSS with them MiB | KiB per connection |")
        L.append("|---|---|---|---|---|")
        for name, r in idle.items():
            if isinstance(r, str):
                L.append(f"| {name} | | failed: {r[:120]} | | |")
                continue
            per = (r["rss_idle_kib"] - r["rss_before_kib"]) / r["connections"]
            L.append(
                f"| {name} | {r['connections']} | {r['rss_before_kib'] / 1024:.1f} | "
                f"{r['rss_idle_kib'] / 1024:.1f} | {per:.1f} |"
            )
        L.append("")
    if spool:
        L.append(
            f"Spooled after-events (AfterQuitGroup), open loop at a fixed offered rate over {ctx.spool_conns} "
            f"keep-alive connections, {ctx.spool_seconds} s (latency from each request's scheduled time):"
        )
        L.append("")
        L.append(
            "| backend | offered/s | acked/s | ack p50/p99/p99.9/max µs | failed | delivered/s | "
            "drain after load s | CPU µs/event | peak RSS MiB |"
        )
        L.append("|---|---|---|---|---|---|---|---|---|")
        for backend, r in spool.items():
            if isinstance(r, str):
                L.append(f"| {backend} | failed: {r[:160]} | | | | | | | |")
                continue
            L.append(
                f"| {backend} | {r['offered_per_s']:.0f} | {r['ok_per_s']:.0f} | "
                f"{r['p50_us']:.0f}/{r['p99_us']:.0f}/{r['p999_us']:.0f}/{r['max_us']:.0f} | "
                f"{r['failed'] + r['unfinished']} | {r['delivered_per_s']:.0f} | {r['drain_s']:.1f} | "
                f"{r['cpu_us_per_event']:.0f} | {r['rss_kib'] / 1024:.1f} |"
            )
        L.append("")
    return "\n".join(L)


def goals(ctx, results):
    """The goals of issue #24, each measured (medians of this run's rounds) and marked pass/miss."""
    L = ["Goals (issue #24), from this run's medians:", "", "| goal | measured | |", "|---|---|---|"]

    def row(goal, measured, ok):
        L.append(f"| {goal} | {measured} | {'n/a' if ok is None else ('pass' if ok else '**miss**')} |")

    g, d = results.get(("gateway", BEFORE)), results.get(("direct", BEFORE))
    gg, n = results.get(("grpc-gateway", BEFORE)), results.get(("null", BEFORE))
    for c in (16, 64):
        if g and gg:
            r = g[c]["rps"] / max(gg[c]["rps"], 1e-9)
            row(f"before, c={c}: ≥ 1.5× grpc-gateway (req/s)", f"{r:.2f}×", r >= 1.5)
        if g and d:
            r = g[c]["rps"] / max(d[c]["rps"], 1e-9)
            row(f"before, c={c}: ≥ 0.5× direct gRPC (req/s)", f"{r:.2f}×", r >= 0.5)
    if g and d:
        p50, p99 = g[1]["p50"] - d[1]["p50"], g[1]["p99"] - d[1]["p99"]
        row("c=1: added p50 over direct gRPC ≤ 100 µs", f"+{p50:.0f} µs", p50 <= 100)
        row("c=1: added p99 over direct gRPC ≤ 500 µs", f"+{p99:.0f} µs", p99 <= 500)
        if n:
            # Direct gRPC's row measures the upstream itself (the server under test there).
            floor = n[16]["cpu_us"] + d[16]["cpu_us"]
            r = g[16]["cpu_us"] / max(floor, 1e-9)
            row(
                "CPU per before-callback at c=16 ≤ 2× (null server + upstream under direct gRPC)",
                f"{g[16]['cpu_us']:.0f} µs vs {n[16]['cpu_us']:.0f} + {d[16]['cpu_us']:.0f} = {floor:.0f} µs: {r:.2f}×",
                r <= 2,
            )
    sp, sy = results.get(("gateway-spool", AFTER)), results.get(("gateway-sync", AFTER))
    if sp:
        drain_s = sp[64].get("drain_s")
        if drain_s is not None:
            row(
                "spool at c=64: drains within 10 % of the load's duration after it stops",
                f"{drain_s:.2f} s after {ctx.duration} s ({drain_s / ctx.duration * 100:.0f} %); "
                f"{kfmt(sp[64]['rps'])} acks/s, {kfmt(sp[64]['upstream_calls_per_s'])} delivered/s during the load",
                drain_s <= 0.1 * ctx.duration,
            )
        if sy:
            r = sp[1]["cpu_us"] / max(sy[1]["cpu_us"], 1e-9)
            row(
                "spool at c=1: a spooled ack (with its delivery) ≤ 2× a synchronous callback's CPU",
                f"{sp[1]['cpu_us']:.0f} vs {sy[1]['cpu_us']:.0f} µs: {r:.2f}× (p50 {sp[1]['p50']:.0f} vs {sy[1]['p50']:.0f} µs)",
                r <= 2,
            )
    if len(L) == 4:
        L.append("| (the rows the goals need were not run) | | n/a |")
    return L


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, 2 s runs (about 2 minutes)")
    ap.add_argument("--rounds", type=int, help="rounds (default 3, quick 1)")
    ap.add_argument("--duration", type=int, help="seconds per run (default 5, quick 2)")
    ap.add_argument(
        "--only",
        help="comma-separated systems (null,direct,gateway,gateway-spool,gateway-sync,grpc-gateway,python,idle,spool)",
    )
    ap.add_argument(
        "--spool-backend",
        default="redb",
        help="comma-separated spool backends: redb (the durable file spool), redis (once the gateway has it)",
    )
    ap.add_argument("--spool-rate", type=int, default=5000)
    ap.add_argument("--spool-conns", type=int, default=64)
    ap.add_argument(
        "--gateway",
        default=os.environ.get("GATEWAY_BIN") or os.path.join(ROOT, "target/release/openim-callback-gateway"),
        help="gateway binary (default $GATEWAY_BIN, else target/release/openim-callback-gateway)",
    )
    ap.add_argument("--python", default=os.path.join(HERE, ".venv/bin/python"))
    ap.add_argument("--payloads", default=os.path.join(ROOT, "../shared/openim/payloads"))
    ap.add_argument("--out", default=os.path.join(HERE, "results/latest.md"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, spools)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ctx = Ctx(args)

    def wanted(name):
        return ctx.only is None or name in ctx.only

    meta = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "git": subprocess.run(
            ["git", "-C", ROOT, "describe", "--always", "--dirty"], check=False, capture_output=True, text=True
        ).stdout.strip()
        or "?",
        "command": "bash bench/run.sh"
        + (" --quick" if ctx.quick else "")
        + "".join(f" {a}" for a in sys.argv[1:] if a != "--quick"),
        "gateway_built": (
            datetime.datetime.fromtimestamp(os.path.getmtime(ctx.gateway_bin)).strftime("%Y-%m-%d %H:%M")
            if os.path.exists(ctx.gateway_bin)
            else "missing"
        ),
        "load_before": loadavg(),
    }
    print(f"load average before: {meta['load_before']}; logs in {ctx.logs}", flush=True)
    rows = [(n, c) for n, c, _ in ROWS if wanted(n)]
    per_round = {key: [] for key in rows}
    failures = {}
    try:
        for rnd in range(ctx.rounds):
            order = rows[rnd % len(rows) :] + rows[: rnd % len(rows)] if rows else []
            for name, cmd in order:
                t = time.time()
                try:
                    r = measure_row(ctx, name, cmd)
                    per_round[(name, cmd)].append(r)
                    print(
                        f"round {rnd + 1}/{ctx.rounds} {name:13} {cmd}: "
                        + "  ".join(f"c={c} {cell(r[c])}" for c in CONCURRENCY)
                        + f"  ({time.time() - t:.0f}s)",
                        flush=True,
                    )
                except (Failed, subprocess.SubprocessError, OSError, ValueError, KeyError) as e:
                    failures[(name, cmd)] = str(e)
                    per_round[(name, cmd)].append(str(e))
                    print(f"round {rnd + 1}/{ctx.rounds} {name:13} {cmd}: FAILED: {e}", flush=True)
        results = {key: median_row(v) for key, v in per_round.items()}

        idle = {}
        if wanted("idle"):
            for name in ("gateway", "grpc-gateway", "python"):
                try:
                    idle[name] = idle_rss(ctx, name)
                    print(f"idle connections {name}: {idle[name]}", flush=True)
                except (Failed, subprocess.SubprocessError, OSError, ValueError) as e:
                    idle[name] = str(e)
                    print(f"idle connections {name}: FAILED: {e}", flush=True)
        spool = {}
        if wanted("spool"):
            for backend in ctx.spool_backends:
                try:
                    spool[backend] = spool_run(ctx, backend)
                    print(f"spool {backend}: {spool[backend]}", flush=True)
                except (Failed, subprocess.SubprocessError, OSError, ValueError, KeyError) as e:
                    spool[backend] = str(e)
                    print(f"spool {backend}: FAILED: {e}", flush=True)
                finally:
                    ctx.extra_spool = {}
    finally:
        PROCS.stop_all()
    meta["load_after"] = loadavg()
    md = render(ctx, results, failures, idle, spool, meta)
    print()
    print(md)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(md + "\n")
    raw = {"meta": meta, "rows": {f"{n} {c}": v for (n, c), v in per_round.items()}, "idle": idle, "spool": spool}
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(raw, f, indent=1, default=str)
    print(f"\nwritten to {args.out} (raw rounds in {os.path.splitext(args.out)[0]}.json)")
    failed = failures or any(isinstance(v, str) for v in list(idle.values()) + list(spool.values()))
    if failed or args.keep:
        print(f"servers' logs kept in {ctx.logs}")
    else:
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
