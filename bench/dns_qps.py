"""certok's authoritative DNS server next to NSD, same records, same core, same load.

    python bench/dns_qps.py [--labels 10000] [--duration 10] [--repeat 3] [--json FILE]

Needs `dnsperf` and `nsd` (`apt-get install dnsperf nsd`). What it does:
- builds one zone: N delegated 16-hex labels (as certok allocates them), a TXT value on every
  4th label and two on every 20th (apex + wildcard orders), SOA, NS and glue;
- serves it with certok's own server code (`start_dns_server` over a `ZoneCache` snapshot,
  under uvloop, UDP rate limiting off: what `certok serve` runs, without the API and worker),
  and with NSD (`nsd -d`, one server process, RRL off, minimal responses), both pinned to the
  same core;
- runs dnsperf on the other core against each, with one query file: TXT at every label in
  random 0x20 case, plus 10% NXDOMAIN names; at max rate, then at `-Q 30000`; `--repeat`
  rounds with the servers taking turns, each server's least disturbed round reported;
- once more at the fixed rate while the snapshot changes every `--churn-every` seconds, as
  it does whenever an order presents or removes a TXT value in production, and once at max
  rate on a zone of `--big-labels` labels;
- checks that TCP answers are byte-identical to UDP answers, and that certok and NSD give
  the same rcode and sections for a sample of questions.
p99 comes from dnsperf's per-query log (`-v`; dnsperf 2.10 prints no percentiles itself);
both servers are measured with the same flags. One dnsperf core cannot saturate NSD, so next
to raw qps the table gives qps per CPU-second of the server process, the fairer comparison of
what one core of each can do.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dns.flags
import dns.message
import dns.query
import dns.rcode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LOOPBACK,
    Cores,
    CpuMeter,
    Measurement,
    Processes,
    Report,
    Target,
    bench_parser,
    clean_environment,
    describe_machine,
    finish,
    format_duration,
    free_port,
    percentile,
    pinned,
    require_tools,
    run_on_uvloop,
    run_subcommand,
    script_command,
    start_process,
    tool_path,
)

from tests.rig.process import ManagedProcess

if TYPE_CHECKING:
    from certok.dnszone.answer import ZoneConfig

BENCH = "dns_qps"
ZONE = "acme.bench.test"
TXT_EVERY = 4  # one label in four has a pending dns-01 value
TWO_VALUES_EVERY = 20  # one in twenty has two (an apex and its wildcard in one order)
NXDOMAIN_FRACTION = 0.10
DNSPERF_TIMEOUT_SECONDS = 2
SERIAL = 2026010101
WARMUP_PASSES = 2
# dnsperf's default -q; at max rate more queries in flight keep the server busy while the
# load generator itself waits for its core.
DEFAULT_OUTSTANDING = 100
MAX_RATE_OUTSTANDING = 300
WARMUP_LIMIT_SECONDS = 60
TARGET_QPS = 60_000
TARGET_RATIO = 0.5
TARGET_P99_SECONDS = 0.005


# --- the zone, as both servers serve it ----------------------------------------------------------


@dataclass(frozen=True)
class ZoneData:
    zone: str
    labels: list[str]
    txt: list[tuple[str, str]]  # (label, value), newest first like the database gives them

    @classmethod
    def generate(cls, count: int, zone: str = ZONE) -> ZoneData:
        labels = [_hex_label(i) for i in range(count)]
        txt: list[tuple[str, str]] = []
        for i, label in enumerate(labels):
            if i % TXT_EVERY == 0:
                txt.append((label, _txt_value(f"{i}")))
            if i % TWO_VALUES_EVERY == 0:
                txt.append((label, _txt_value(f"{i}-wildcard")))
        return cls(zone=zone, labels=labels, txt=txt)

    def with_changed_value(self, generation: int) -> ZoneData:
        """The same zone with one label's TXT value replaced: what an order's step does."""
        label = self.labels[0]
        rest = [row for row in self.txt if row[0] != label]
        return ZoneData(self.zone, self.labels, [(label, _txt_value(f"gen{generation}")), *rest])


def _hex_label(index: int) -> str:
    return hashlib.sha256(f"bench-label-{index}".encode()).hexdigest()[:16]


def _txt_value(seed: str) -> str:
    # The shape of a dns-01 value: base64url of a SHA-256 digest, 43 characters.
    digest = hashlib.sha256(f"bench-txt-{seed}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def _zone_config(zone: str) -> ZoneConfig:
    """The zone config `certok serve` builds from its default settings for this zone."""
    from certok.dnszone.answer import ZoneConfig
    from certok.settings import Settings

    return ZoneConfig.from_settings(Settings(dns_zone=zone))


def write_nsd_zone(path: Path, data: ZoneData) -> None:
    """The same records as a zone file, with the SOA certok renders (serial, timers, TTL)."""
    from certok.dnszone.answer import SOA_EXPIRE, SOA_REFRESH, SOA_RETRY

    config = _zone_config(data.zone)
    ttl = config.ttl
    origin = f"{data.zone}."
    lines = [
        f"$ORIGIN {origin}",
        f"$TTL {ttl}",
        f"@ IN SOA {config.nameservers[0]}. hostmaster.{origin} "
        f"( {SERIAL} {SOA_REFRESH} {SOA_RETRY} {SOA_EXPIRE} {ttl} )",
    ]
    lines += [f"@ IN NS {ns}." for ns in config.nameservers]
    for ns in config.nameservers:
        if ns.endswith("." + data.zone):
            lines += [f"{ns}. IN A {address}" for address in config.nameserver_addresses]
    with_txt = {label for label, _ in data.txt}
    for label, value in data.txt:
        lines.append(f'{label} IN TXT "{value}"')
    for label in data.labels:
        if label not in with_txt:
            # certok answers NODATA at an allocated label without a value. A record of a
            # private-use type (RFC 3597 syntax) makes the name exist in NSD too, and no one
            # asks for that type.
            lines.append(f"{label} IN TYPE65280 \\# 0")
    path.write_text("\n".join(lines) + "\n")


NSD_CONF = """\
server:
    ip-address: {host}
    port: {port}
    do-ip6: no
    username: ""
    chroot: ""
    database: ""
    zonesdir: "{dir}"
    zonelistfile: "{dir}/zone.list"
    xfrdfile: "{dir}/xfrd.state"
    xfrdir: "{dir}"
    pidfile: "{dir}/nsd.pid"
    logfile: "{dir}/nsd.log"
    # One serving process, like certok's one event loop.
    server-count: 1
    verbosity: 1
    hide-version: yes
    # RRL off (certok's rate limiting is off too): one client is the whole benchmark.
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
    # No NS/glue added to positive answers: the same sections, and bytes, certok sends.
    minimal-responses: yes
remote-control:
    control-enable: no
zone:
    name: "{zone}"
    zonefile: "zone.db"
"""


def write_query_file(path: Path, data: ZoneData, seed: int = 1) -> int:
    """TXT at every label in random case (resolvers use 0x20), plus NXDOMAIN names; shuffled."""
    rng = random.Random(seed)
    lines = [f"{_random_case(f'{label}.{data.zone}', rng)} TXT" for label in data.labels]
    missing = max(1, int(len(data.labels) * NXDOMAIN_FRACTION))
    lines += [f"{rng.getrandbits(64):016x}x.{data.zone} TXT" for _ in range(missing)]
    rng.shuffle(lines)
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def _random_case(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if c.isalpha() and rng.random() < 0.5 else c for c in name)


# --- certok's server, as a child process ---------------------------------------------------------


def serve_certok(argv: list[str]) -> None:
    """`dns_qps.py serve-certok --port P --labels N [--churn-every S]` (run by the benchmark)."""
    parser = argparse.ArgumentParser(prog="dns_qps.py serve-certok")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--labels", type=int, required=True)
    parser.add_argument("--churn-every", type=float, default=0.0)
    args = parser.parse_args(argv)
    clean_environment()
    run_on_uvloop(_serve_certok(args.port, ZoneData.generate(args.labels), args.churn_every))


async def _serve_certok(port: int, data: ZoneData, churn_every: float) -> None:
    from certok.dnszone.server import start_dns_server
    from certok.dnszone.zone_cache import ZoneCache
    from certok.dnszone.zone_records import ZoneRecords

    cache = ZoneCache(None)
    cache.replace(ZoneRecords.build(data.labels, data.txt, serial=SERIAL))
    server = await start_dns_server(
        LOOPBACK, port, _zone_config(data.zone), cache, rate_limit_per_second=None
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    async def churn() -> None:
        # A new snapshot, as ZoneCache.refresh swaps in when a TXT row was added or removed.
        generation = 0
        while True:
            await asyncio.sleep(churn_every)
            generation += 1
            changed = data.with_changed_value(generation)
            cache.replace(
                ZoneRecords.build(changed.labels, changed.txt, serial=SERIAL + generation)
            )

    task = asyncio.create_task(churn()) if churn_every > 0 else None
    print(f"serving {len(data.labels)} labels on {LOOPBACK}:{server.port}", flush=True)
    await stop.wait()
    if task is not None:
        task.cancel()
    await server.close()


# --- running servers -----------------------------------------------------------------------------


def dns_answers(port: int) -> bool:
    query = dns.message.make_query(f"{ZONE}.", "SOA")
    try:
        reply = dns.query.udp(query, LOOPBACK, timeout=0.3, port=port)
    except Exception:
        return False
    return reply.rcode() == 0 and bool(reply.answer)


def start_certok(
    workdir: Path, port: int, labels: int, core: int | None, churn: float = 0.0
) -> ManagedProcess:
    return start_process(
        "certok-dns" + ("-churn" if churn else ""),
        script_command(__file__, "serve-certok", "--port", str(port), "--labels", str(labels),
                       "--churn-every", str(churn)),
        workdir=workdir,
        core=core,
        ready=lambda: dns_answers(port),
        what="answering DNS",
    )  # fmt: skip


def start_nsd(workdir: Path, port: int, data: ZoneData, core: int | None) -> ManagedProcess:
    nsd_dir = workdir / "nsd"
    nsd_dir.mkdir()
    write_nsd_zone(nsd_dir / "zone.db", data)
    conf = nsd_dir / "nsd.conf"
    conf.write_text(NSD_CONF.format(host=LOOPBACK, port=port, dir=nsd_dir, zone=data.zone))
    checked = subprocess.run(
        [tool_path("nsd-checkconf"), str(conf)], capture_output=True, text=True, check=False
    )
    if checked.returncode != 0:
        raise SystemExit(f"nsd-checkconf rejected {conf}: {checked.stderr.strip()}")
    return start_process(
        "nsd",
        [tool_path("nsd"), "-d", "-c", str(conf)],
        workdir=workdir,
        core=core,
        ready=lambda: dns_answers(port),
        what="answering DNS",
        cwd=nsd_dir,
        extra_logs=[nsd_dir / "nsd.log"],
    )


# --- dnsperf -------------------------------------------------------------------------------------


@dataclass
class PerfRun:
    qps: float
    avg: float
    p99: float
    max: float
    sent: int
    lost: int
    rcodes: str
    cpu_percent: float | None

    @property
    def per_cpu_second(self) -> float | None:
        """Answers per CPU-second of the server: what one core of it can do, even when the
        load generator (dnsperf on one core) is the limit, as it is for NSD."""
        if not self.cpu_percent:
            return None
        return self.qps / (self.cpu_percent / 100.0)

    @property
    def unexpected_rcodes(self) -> list[str]:
        # The query file asks only for names that exist (NOERROR) or do not (NXDOMAIN).
        return [
            part.strip()
            for part in self.rcodes.split(",")
            if part.strip() and part.split()[0] not in ("NOERROR", "NXDOMAIN")
        ]


_SUMMARY = {
    "qps": re.compile(r"Queries per second:\s+([\d.]+)"),
    "avg": re.compile(r"Average Latency \(s\):\s+([\d.]+) \(min [\d.]+, max ([\d.]+)\)"),
    "sent": re.compile(r"Queries sent:\s+(\d+)"),
    "lost": re.compile(r"Queries lost:\s+(\d+)"),
    "rcodes": re.compile(r"Response codes:\s+(.*)"),
}


@dataclass(frozen=True)
class Load:
    """How dnsperf drives a server: at a fixed rate (`-Q`) or as fast as it answers."""

    seconds: float
    rate: int | None
    outstanding: int
    core: int | None


def run_dnsperf(
    port: int, query_file: Path, load: Load, *, server_pgid: int | None, workdir: Path
) -> tuple[PerfRun, str]:
    """One measured dnsperf run; the result and the command line."""
    argv = [tool_path("dnsperf"), "-s", LOOPBACK, "-p", str(port), "-d", str(query_file)]
    argv += ["-l", f"{load.seconds:g}", "-q", str(load.outstanding)]
    # -v logs every answer with its latency: the only way to a p99 with dnsperf 2.10.
    argv += ["-t", str(DNSPERF_TIMEOUT_SECONDS), "-v"]
    if load.rate:
        argv += ["-Q", str(load.rate)]
    argv = pinned(argv, load.core)
    log = workdir / "dnsperf.out"
    with open(log, "wb") as out, CpuMeter(server_pgid) as cpu:
        subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=True)
    latencies = array("d")
    summary: dict[str, tuple[str, ...]] = {}
    with open(log, "rb") as handle:
        for raw in handle:
            if raw.startswith(b"> "):
                # "> NOERROR name TXT 0.000310" per answer; "> T name TXT" per timeout
                if not raw.startswith(b"> T "):
                    latencies.append(float(raw.rsplit(b" ", 1)[1]))
                continue
            line = raw.decode(errors="replace")
            for key, pattern in _SUMMARY.items():
                match = pattern.search(line)
                if match:
                    summary[key] = match.groups()
    log.unlink()
    if "qps" not in summary or "avg" not in summary:
        raise SystemExit(f"could not read dnsperf's summary; command: {' '.join(argv)}")
    result = PerfRun(
        qps=float(summary["qps"][0]),
        avg=float(summary["avg"][0]),
        p99=percentile(sorted(latencies), 0.99),
        max=float(summary["avg"][1]),
        sent=int(summary["sent"][0]),
        lost=int(summary["lost"][0]),
        rcodes=summary.get("rcodes", ("",))[0].strip(),
        cpu_percent=cpu.percent,
    )
    return result, shlex.join(argv)


def warm_up(port: int, query_file: Path, core: int | None) -> None:
    """Two passes over the query file, unmeasured: every distinct question asked twice."""
    argv = [tool_path("dnsperf"), "-s", LOOPBACK, "-p", str(port), "-d", str(query_file)]
    argv += ["-n", str(WARMUP_PASSES), "-l", str(WARMUP_LIMIT_SECONDS)]
    subprocess.run(pinned(argv, core), capture_output=True, check=True)


# --- correctness spot checks ---------------------------------------------------------------------


def sample_queries(data: ZoneData) -> list[dns.message.Message]:
    rng = random.Random(7)
    with_txt = sorted({label for label, _ in data.txt})
    without = sorted(set(data.labels) - set(with_txt))
    names = rng.sample(with_txt, 10) + rng.sample(without, 10)
    names += [f"{rng.getrandbits(64):016x}x" for _ in range(5)]
    queries = []
    for label in names:
        name = _random_case(f"{label}.{data.zone}.", rng)
        queries.append(dns.message.make_query(name, "TXT"))
        queries.append(dns.message.make_query(name, "TXT", use_edns=0, payload=1232))
        queries.append(dns.message.make_query(name, "A", want_dnssec=True))
    for name, rdtype in (
        (f"{data.zone}.", "SOA"),
        (f"{data.zone}.", "NS"),
        (f"ns1.{data.zone}.", "A"),
    ):
        queries.append(dns.message.make_query(name, rdtype))
        queries.append(dns.message.make_query(name.upper(), rdtype, use_edns=0))
    return queries


def _zero_id(wire: bytes) -> bytes:
    return b"\0\0" + wire[2:]


def tcp_matches_udp(port: int, queries: list[dns.message.Message]) -> tuple[int, list[str]]:
    """How many answers are byte-identical over TCP and UDP (message ID aside), and the others."""
    same, different = 0, []
    for query in queries:
        udp = dns.query.udp(query, LOOPBACK, port=port, timeout=2)
        query.id = (query.id + 1) & 0xFFFF  # a fresh ID, so the comparison must equalise it
        tcp = dns.query.tcp(query, LOOPBACK, port=port, timeout=2)
        assert udp.wire is not None and tcp.wire is not None
        if _zero_id(udp.wire) == _zero_id(tcp.wire):
            same += 1
        else:
            different.append(query.question[0].to_text())
    return same, different


def _sections(reply: dns.message.Message) -> tuple[str, ...]:
    def text(section: list) -> str:
        return "\n".join(sorted(rrset.to_text().lower() for rrset in section))

    return (
        dns.rcode.to_text(reply.rcode()),
        str(bool(reply.flags & dns.flags.AA)),
        text(reply.answer),
        text(reply.authority),
        text(reply.additional),
    )


def same_as_nsd(
    certok_port: int, nsd_port: int, queries: list[dns.message.Message]
) -> tuple[int, list[str]]:
    same, different = 0, []
    for query in queries:
        ours = dns.query.udp(query, LOOPBACK, port=certok_port, timeout=2)
        theirs = dns.query.udp(query, LOOPBACK, port=nsd_port, timeout=2)
        if _sections(ours) == _sections(theirs):
            same += 1
        else:
            different.append(query.question[0].to_text())
    return same, different


# --- the benchmark -------------------------------------------------------------------------------


def socket_buffer_note() -> str:
    """The UDP receive buffer the kernel grants (certok asks for 4 MiB; rmem_max caps it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        with contextlib.suppress(OSError):
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        granted = probe.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return f"UDP receive buffer granted: {granted // 1024} KiB"


@dataclass
class Server:
    name: str
    port: int
    process: ManagedProcess


class DnsBench:
    """The servers of one run, the query file, and the measured dnsperf runs against them."""

    def __init__(self, args: argparse.Namespace, workdir: Path, cores: Cores) -> None:
        self.args = args
        self.workdir = workdir
        self.cores = cores
        self.commands: list[str] = []
        self.processes = Processes()

    def measure(self, server: Server, query_file: Path, load: Load) -> PerfRun:
        rate = f"-Q {load.rate}" if load.rate else "max rate"
        print(f"dns_qps: {server.name}, {rate}, {load.seconds:g} s", flush=True)
        result, command = run_dnsperf(
            server.port, query_file, load, server_pgid=server.process.pid, workdir=self.workdir
        )
        self.commands.append(command)
        return result

    def best_of(self, servers: list[Server], query_file: Path, load: Load) -> list[PerfRun]:
        """`--repeat` rounds, the servers taking turns; each server's least disturbed run.

        The machine is shared: other work steals the server's core now and then, and taking
        turns spreads that over both servers. "Least disturbed" is the highest answer rate at
        max rate, the lowest p99 at a fixed rate.
        """
        runs: list[list[PerfRun]] = [[] for _ in servers]
        for _ in range(self.args.repeat):
            for index, server in enumerate(servers):
                runs[index].append(self.measure(server, query_file, load))
        if load.rate:
            return [min(r, key=lambda run: (run.lost, run.p99)) for r in runs]
        return [max(r, key=lambda run: run.qps) for r in runs]

    def start(self, process: ManagedProcess) -> ManagedProcess:
        return self.processes.add(process)

    def stop_all(self) -> None:
        self.processes.stop_all()


def run(args: argparse.Namespace) -> Report:
    require_tools("dnsperf", "nsd", "nsd-checkconf", "taskset")
    clean_environment()
    cores = Cores.pick()
    data = ZoneData.generate(args.labels)
    print(f"dns_qps: {describe_machine()}", flush=True)
    print(f"dns_qps: {cores.describe()}; {socket_buffer_note()}", flush=True)
    max_rate = Load(args.duration, None, args.outstanding, cores.load)
    fixed_rate = Load(args.duration, args.fixed_rate, DEFAULT_OUTSTANDING, cores.load)
    with tempfile.TemporaryDirectory(prefix="certok-bench-dns-") as tmp:
        workdir = Path(tmp)
        bench = DnsBench(args, workdir, cores)
        query_file = workdir / "queries.txt"
        count = write_query_file(query_file, data)
        print(
            f"dns_qps: {len(data.labels)} labels, {len(data.txt)} TXT values, "
            f"{count} questions per pass of the query file",
            flush=True,
        )
        try:
            nsd_port, certok_port = free_port("nsd"), free_port("certok dns")
            nsd = Server(
                "NSD", nsd_port, bench.start(start_nsd(workdir, nsd_port, data, cores.server))
            )
            certok = Server(
                "certok",
                certok_port,
                bench.start(start_certok(workdir, certok_port, args.labels, cores.server)),
            )
            queries = sample_queries(data)
            tcp_same, tcp_diff = tcp_matches_udp(certok_port, queries)
            nsd_same, nsd_diff = same_as_nsd(certok_port, nsd_port, queries)
            # Warm both: certok builds its answer index and reply cache on first use.
            for server in (nsd, certok):
                warm_up(server.port, query_file, cores.load)
            nsd_max, certok_max = bench.best_of([nsd, certok], query_file, max_rate)
            nsd_fixed, certok_fixed = bench.best_of([nsd, certok], query_file, fixed_rate)
            bench.stop_all()

            churn: PerfRun | None = None
            if args.churn_every > 0:
                port = free_port("certok dns, churning")
                process = start_certok(
                    workdir, port, args.labels, cores.server, churn=args.churn_every
                )
                churning = Server(f"certok, new snapshot every {args.churn_every:g} s", port,
                                  bench.start(process))  # fmt: skip
                warm_up(port, query_file, cores.load)
                churn = bench.measure(churning, query_file, fixed_rate)
                bench.stop_all()

            big: PerfRun | None = None
            if args.big_labels:
                big_data = ZoneData.generate(args.big_labels)
                big_queries = workdir / "queries-big.txt"
                write_query_file(big_queries, big_data)
                port = free_port("certok dns, big zone")
                process = start_certok(workdir, port, args.big_labels, cores.server)
                bigger = Server(f"certok, {args.big_labels} labels", port, bench.start(process))
                warm_up(port, big_queries, cores.load)
                big = bench.measure(bigger, big_queries, max_rate)
                bench.stop_all()
        finally:
            bench.stop_all()

    report = Report(commands=bench.commands)
    ratio = certok_max.qps / nsd_max.qps if nsd_max.qps else None
    nsd_core, certok_core = nsd_max.per_cpu_second, certok_max.per_cpu_second
    core_ratio = certok_core / nsd_core if certok_core and nsd_core else None

    def row(case: str, result: PerfRun, *, ratio: float | None = None, note: str = "") -> None:
        notes = [f"lost {result.lost}/{result.sent}" if result.lost else "none lost"]
        if result.unexpected_rcodes:
            notes.append("unexpected: " + ", ".join(result.unexpected_rcodes))
        if note:
            notes.append(note)
        report.measurements.append(
            Measurement(
                bench=BENCH,
                case=case,
                rate=result.qps,
                rate_unit="qps",
                ratio=ratio,
                ratio_of="NSD" if ratio is not None else "",
                latency={"avg": result.avg, "p99": result.p99, "max": result.max},
                cpu_percent=result.cpu_percent,
                note="; ".join(notes),
            )
        )

    def per_core(value: float | None, ratio: float | None) -> str:
        if value is None:
            return ""
        return f"{value:,.0f} qps per server CPU-second" + (
            f" ({ratio:.2f}x NSD)" if ratio is not None else ""
        )

    labels = f"{args.labels} labels"
    row(f"NSD, UDP, max rate, {labels}", nsd_max, ratio=1.0, note=per_core(nsd_core, None))
    row(
        f"certok, UDP, max rate, {labels}",
        certok_max,
        ratio=ratio,
        note=per_core(certok_core, core_ratio),
    )
    row(f"NSD, UDP, -Q {args.fixed_rate}", nsd_fixed, note="this machine's latency floor")
    row(f"certok, UDP, -Q {args.fixed_rate}", certok_fixed)
    if churn is not None:
        row(
            f"certok, UDP, -Q {args.fixed_rate}, new snapshot every {args.churn_every:g} s",
            churn,
            note="one TXT value changes, as while orders run",
        )
    if big is not None:
        big_core = big.per_cpu_second
        row(
            f"certok, UDP, max rate, {args.big_labels} labels",
            big,
            ratio=big.qps / nsd_max.qps if nsd_max.qps else None,
            note=per_core(big_core, big_core / nsd_core if big_core and nsd_core else None),
        )
    report.measurements.append(
        Measurement(
            bench=BENCH,
            case="certok TCP answers == UDP answers",
            note=f"{tcp_same}/{tcp_same + len(tcp_diff)} byte-identical (ID aside)"
            + (f"; differ: {', '.join(tcp_diff[:3])}" if tcp_diff else ""),
        )
    )
    report.measurements.append(
        Measurement(
            bench=BENCH,
            case="certok answers == NSD answers",
            note=f"{nsd_same}/{nsd_same + len(nsd_diff)} same rcode, AA and sections"
            + (f"; differ: {', '.join(nsd_diff[:3])}" if nsd_diff else ""),
        )
    )
    p99_goal = f"certok p99 < {format_duration(TARGET_P99_SECONDS)} at {args.fixed_rate:,} qps"
    p99_measured = (
        f"p99 {format_duration(certok_fixed.p99)}, {certok_fixed.qps:,.0f} qps answered, "
        f"lost {certok_fixed.lost} (NSD: p99 {format_duration(nsd_fixed.p99)})"
    )
    ratio_measured = (
        f"{core_ratio:.2f}x per CPU-second, {ratio:.2f}x raw qps" if core_ratio and ratio else "-"
    )
    report.targets += [
        Target(
            BENCH,
            f"certok >= {TARGET_QPS:,} qps on one core",
            f"{certok_max.qps:,.0f} qps ({certok_core or 0:,.0f} per CPU-second)",
            certok_max.qps >= TARGET_QPS,
        ),
        Target(
            BENCH,
            f"certok >= {TARGET_RATIO} x NSD (per server CPU-second)",
            ratio_measured,
            core_ratio is not None and core_ratio >= TARGET_RATIO,
        ),
        Target(
            BENCH,
            p99_goal,
            p99_measured,
            certok_fixed.p99 < TARGET_P99_SECONDS and certok_fixed.lost == 0,
        ),
        Target(
            BENCH,
            "TCP answers byte-identical to UDP",
            f"{tcp_same}/{tcp_same + len(tcp_diff)}",
            not tcp_diff,
        ),
    ]
    return report


def main() -> None:
    if run_subcommand({"serve-certok": serve_certok}):
        return
    parser = bench_parser(__doc__)
    parser.add_argument("--labels", type=int, default=10_000, help="delegated labels (10000)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument(
        "--repeat", type=int, default=3,
        help="rounds of the max-rate and fixed-rate runs; the best of each is reported (3)",
    )  # fmt: skip
    parser.add_argument("--fixed-rate", type=int, default=30_000, help="qps of the -Q runs")
    parser.add_argument(
        "--outstanding", type=int, default=MAX_RATE_OUTSTANDING,
        help=f"dnsperf -q at max rate ({MAX_RATE_OUTSTANDING})",
    )  # fmt: skip
    parser.add_argument(
        "--churn-every", type=float, default=5.0,
        help="seconds between snapshot changes in the churn run (5; 0 skips it)",
    )  # fmt: skip
    parser.add_argument(
        "--big-labels", type=int, default=20_000,
        help="labels of the extra max-rate run on a bigger zone (20000; 0 skips it)",
    )  # fmt: skip
    args = parser.parse_args()
    finish(run(args), args.json)


if __name__ == "__main__":
    main()
