#!/usr/bin/env python3
"""End-to-end: a real kvtierd scraped by a real Prometheus server, both on loopback.

Starts kvtierd with its admin HTTP on a free port, starts Prometheus with the scrape config and
alert rules from deploy/prometheus/ (only the target and intervals are rewritten), drives a
prefix-reuse workload through the daemon with two client worker processes, and then reads kvtier_*
series back through Prometheus's HTTP query API. Exits non-zero with a reason on any failure.

usage: prometheus_e2e.py BUILD_DIR SOURCE_DIR
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

build_dir, source_dir = sys.argv[1], sys.argv[2]
deadline_s = 120


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def wait_for(what, predicate, timeout_s):
    start = time.time()
    last = None
    while time.time() - start < timeout_s:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.25)
    raise SystemExit(f"FAIL: timed out waiting for {what} (last: {last})")


def query(prom, expr):
    url = f"http://127.0.0.1:{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    status, body = http_get(url)
    data = json.loads(body)
    if data.get("status") != "success":
        raise RuntimeError(body)
    return data["data"]["result"]


def scalar(prom, expr):
    result = query(prom, expr)
    return float(result[0]["value"][1]) if result else None


def main():
    tmp = tempfile.mkdtemp(prefix="kvtier-e2e-")
    procs = []
    try:
        http_port, prom_port = free_port(), free_port()
        data_dir = os.path.join(tmp, "data")
        socket_path = os.path.join(data_dir, "kvtierd.sock")
        config = os.path.join(tmp, "kvtierd.yaml")
        with open(config, "w") as f:
            f.write(f"data_dir: {data_dir}\nsocket_path: {socket_path}\n"
                    f"http_address: 127.0.0.1:{http_port}\n"
                    "store:\n  page_bytes: 65536\n  hbm_pages: 32\n  dram_pages: 256\n"
                    "  hbm_backend: host-emulated\n  hbm_devices: [0, 1]\n")
        daemon_log = open(os.path.join(tmp, "kvtierd.log"), "w")
        daemon = subprocess.Popen([os.path.join(build_dir, "daemon", "kvtierd"), f"--config={config}"],
                                  stdout=daemon_log, stderr=subprocess.STDOUT)
        procs.append(daemon)
        wait_for("kvtierd /healthz", lambda: http_get(f"http://127.0.0.1:{http_port}/healthz")[0] == 200, 30)

        # Prometheus with deploy/'s scrape config and rules; only the target and intervals change.
        prom_dir = os.path.join(tmp, "prometheus")
        os.makedirs(prom_dir)
        shutil.copy(os.path.join(source_dir, "deploy", "prometheus", "alerts.yml"), prom_dir)
        with open(os.path.join(source_dir, "deploy", "prometheus", "prometheus.yml")) as f:
            prom_config = f.read()
        assert "127.0.0.1:9400" in prom_config, "deploy/prometheus/prometheus.yml lost its target"
        prom_config = (prom_config.replace("127.0.0.1:9400", f"127.0.0.1:{http_port}")
                       .replace("scrape_interval: 15s", "scrape_interval: 1s")
                       .replace("evaluation_interval: 15s", "evaluation_interval: 1s"))
        prom_config_path = os.path.join(prom_dir, "prometheus.yml")
        with open(prom_config_path, "w") as f:
            f.write(prom_config)
        subprocess.run(["promtool", "check", "config", prom_config_path], check=True,
                       stdout=subprocess.DEVNULL)
        prom_log = open(os.path.join(tmp, "prometheus.log"), "w")
        prom = subprocess.Popen(["prometheus", f"--config.file={prom_config_path}",
                                 f"--storage.tsdb.path={os.path.join(prom_dir, 'tsdb')}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=prom_log, stderr=subprocess.STDOUT)
        procs.append(prom)
        wait_for("Prometheus ready", lambda: http_get(f"http://127.0.0.1:{prom_port}/-/ready")[0] == 200, 60)
        wait_for("first scrape of kvtierd", lambda: scalar(prom_port, 'up{job="kvtier"}') == 1, 30)

        # Two worker processes share prefixes through the daemon.
        workers = []
        for i in range(2):
            workers.append(subprocess.Popen(
                [os.path.join(build_dir, "daemon", "kvtier-demo"), f"--socket={socket_path}",
                 f"--worker_index={i}", "--workers=2", "--requests=300"],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        for w in workers:
            if w.wait(timeout=deadline_s) != 0:
                raise SystemExit(f"FAIL: a worker exited with {w.returncode}")

        # What the workload did must come back through Prometheus's query API.
        hits = wait_for("kvtier_hits_total > 0 in Prometheus",
                        lambda: scalar(prom_port, "sum(kvtier_hits_total)"), 30)
        lookups = wait_for("lookup latency histogram in Prometheus", lambda: scalar(
            prom_port, 'sum(kvtier_request_duration_seconds_count{op="lookup"})'), 30)
        sessions = wait_for("sessions counted", lambda: scalar(prom_port, "kvtier_client_sessions_total"), 30)
        backend = query(prom_port, "kvtier_hbm_backend_info")
        capacity = query(prom_port, "kvtier_tier_capacity_bytes")
        # The dashboard's per-GPU pool panel, its own query: one series a pool, a share in [0, 1].
        with open(os.path.join(source_dir, "deploy", "grafana", "kvtier-dashboard.json")) as f:
            panels = json.load(f)["panels"]
        pool_expr = next(p for p in panels if p["title"].startswith("HBM pools"))["targets"][0]["expr"]
        pools = query(prom_port, pool_expr)
        rules = json.loads(http_get(f"http://127.0.0.1:{prom_port}/api/v1/rules")[1])
        alerts = [r["name"] for g in rules["data"]["groups"] for r in g["rules"]]
        checks = [
            (hits > 0, f"hits {hits}"),
            (lookups > 0, f"lookups {lookups}"),
            (sessions >= 2, f"sessions {sessions}"),
            (len(backend) == 1 and backend[0]["metric"].get("backend") == "host-emulated",
             f"backend {backend}"),
            ({m["metric"]["tier"] for m in capacity} == {"hbm", "dram"}, f"capacity {capacity}"),
            (sorted(m["metric"].get("device") for m in pools) == ["0", "1"] and
             all(0 <= float(m["value"][1]) <= 1 for m in pools), f"hbm pools {pools}"),
            ("KvtierDown" in alerts and len(alerts) >= 6, f"alerts {alerts}"),
        ]
        failed = [why for ok, why in checks if not ok]
        if failed:
            raise SystemExit("FAIL: " + "; ".join(failed))
        print(f"e2e: Prometheus read back hits={hits:.0f} lookups={lookups:.0f} "
              f"sessions={sessions:.0f} alerts={len(alerts)}")

        daemon.send_signal(signal.SIGTERM)
        if daemon.wait(timeout=30) != 0:
            raise SystemExit(f"FAIL: kvtierd exited with {daemon.returncode} on SIGTERM")
        # The operator's log: one leveled line per event, with the fields one greps for.
        daemon_log.close()
        with open(os.path.join(tmp, "kvtierd.log")) as f:
            log = f.read()
        import re
        for pattern in (r"(?m)^I\d{8} [\d:.]+ +\d+ \S+\] event=serving socket=\S+ pid=\d+ .*policy=kvtier",
                        r"(?m)^I.*event=session_open session=\d+ pid=\d+ uid=\d+ gid=\d+$",
                        r"(?m)^I.*event=session_close session=\d+ uid=\d+ namespace=",
                        r"(?m)^I.*event=shutdown clean=1$"):
            if not re.search(pattern, log):
                raise SystemExit(f"FAIL: kvtierd's log has no line matching {pattern!r}:\n{log}")
        if len(log.splitlines()) > 40:
            raise SystemExit(f"FAIL: {len(log.splitlines())} log lines for 2 sessions: per-page logging?")
        print("1 passed, 0 failed")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if os.environ.get("KVTIER_KEEP_E2E") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("kept", tmp)


if __name__ == "__main__":
    main()
