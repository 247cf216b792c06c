"""Flink peer: the benchmark's 1-minute windows per dataset in Flink SQL, streaming mode.

PyFlink's Table API starts a JVM (the py4j gateway, a child of this process) that runs the job
in a local mini-cluster. The source is the NDJSON file (filesystem connector, json format) with
an event-time attribute `ts` and `WATERMARK FOR ts AS ts - INTERVAL '5' SECOND` (the pipeline's
`max_out_of_orderness: 5s`); a TUMBLE window table-valued function groups by datasetName and
window; the rows go to a filesystem CSV sink whose part files are then joined into OUT.csv with
the same columns as peer_duckdb.py (window_start in epoch ms), sorted by datasetName,
window_start.

Late events: a window aggregate of Flink drops, silently, an event whose window the watermark
has already passed (counted only in the operator's numLateRecordsDropped metric); weir sends
such an event to its dead letters. Flink's watermark is emitted periodically
(pipeline.auto-watermark-interval, 200 ms), so it lags behind weir's, which follows every
event: Flink drops no more events than weir dead-letters. The benchmark's input has none.

At the end the JVM is shut down and waited for, so that `time` of this process counts its CPU
time (and reports the larger peak RSS of the two processes). A breakdown goes to stderr in one
line: seconds and CPU-seconds up to the job's submission (JVM and table environment start-up),
of the job (mini-cluster start, run, end) and of the shut-down, and the peak RSS of each process.

usage: peer_flink.py EVENTS.ndjson OUT.csv [PARALLELISM]       (parallelism.default, 1)
Extra JVM options: JVM_ARGS (read by PyFlink).
"""
import csv
import glob
import os
import resource
import shutil
import signal
import sys
import tempfile
import time

COLUMNS = ("datasetName", "window_start", "count", "sum_recordCount", "sum_sizeBytes",
           "max_sizeBytes", "failure_count")
OUT_OF_ORDERNESS_MS = 5000
TICK = os.sysconf("SC_CLK_TCK")


def children():
    """Process ids of this process's children (the gateway JVM)."""
    pids = []
    for task in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with open(task) as f:
            pids += [int(p) for p in f.read().split()]
    return pids


def cpu(pid):
    """User + system CPU-seconds of a running process (all its threads) so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except OSError:
        return 0.0


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def job_sql(t_env, events, sink_dir, parallelism):
    """Declares the source and sink tables and submits the INSERT; returns its TableResult."""
    conf = t_env.get_config()
    conf.set("parallelism.default", str(parallelism))
    conf.set("table.local-time-zone", "UTC")
    conf.set("pipeline.name", "weir-compare-flink")
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE events (
          `timestamp` BIGINT,
          datasetName STRING,
          recordCount BIGINT,
          sizeBytes BIGINT,
          status STRING,
          ts AS TO_TIMESTAMP_LTZ(`timestamp`, 3),
          WATERMARK FOR ts AS ts - INTERVAL '{OUT_OF_ORDERNESS_MS / 1000:g}' SECOND
        ) WITH (
          'connector' = 'filesystem',
          'path' = 'file://{os.path.abspath(events)}',
          'format' = 'json'
        )""")
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE windows (
          datasetName STRING,
          window_start BIGINT,
          `count` BIGINT,
          sum_recordCount BIGINT,
          sum_sizeBytes BIGINT,
          max_sizeBytes BIGINT,
          failure_count BIGINT
        ) WITH (
          'connector' = 'filesystem',
          'path' = 'file://{sink_dir}',
          'format' = 'csv'
        )""")
    # window_start is a TIMESTAMP(3) in table.local-time-zone (UTC): its minutes since the epoch
    # times 60,000 are its epoch milliseconds (the window is whole minutes).
    return t_env.execute_sql("""
        INSERT INTO windows
        SELECT datasetName,
               CAST(TIMESTAMPDIFF(MINUTE, TIMESTAMP '1970-01-01 00:00:00', window_start) AS BIGINT)
                 * 60000,
               COUNT(*),
               SUM(recordCount),
               SUM(sizeBytes),
               MAX(sizeBytes),
               COUNT(*) FILTER (WHERE status = 'FAILURE')
        FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(ts), INTERVAL '1' MINUTE))
        GROUP BY datasetName, window_start, window_end""")


def join_parts(sink_dir, out):
    """Joins the sink's committed part files into one sorted CSV with a header."""
    hidden = [p for p in glob.glob(os.path.join(sink_dir, "**", ".*"), recursive=True)]
    if hidden:
        raise RuntimeError(f"uncommitted part files left: {hidden[:3]}")
    rows = []
    for part in glob.glob(os.path.join(sink_dir, "**", "*"), recursive=True):
        if os.path.isfile(part):
            with open(part, newline="", encoding="utf-8") as f:
                rows += list(csv.reader(f))
    rows.sort(key=lambda r: (r[0], int(r[1])))
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        w.writerows(rows)
    return len(rows)


def stop(jvms):
    """Stops the gateway JVM and waits for it (so that its CPU time counts for this process)."""
    from pyflink.java_gateway import get_gateway

    try:
        get_gateway().shutdown()
    except Exception as e:  # noqa: BLE001 - the JVM is ended below in any case
        print(f"flink: gateway shutdown: {e}", file=sys.stderr)
    for pid in jvms:
        os.kill(pid, signal.SIGTERM)  # runs the JVM's shutdown hooks (the mini-cluster's)
    deadline = time.time() + 30
    for pid in jvms:
        while True:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.time() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.02)


def main(events, out, parallelism=1):
    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix="weir-flink-")
    # Flink unpacks jars and makes mini-cluster folders under java.io.tmpdir and leaves them.
    os.environ["JVM_ARGS"] = f"{os.environ.get('JVM_ARGS', '')} -Djava.io.tmpdir={tmp}".strip()
    from pyflink.table import EnvironmentSettings, TableEnvironment

    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    jvms = children()
    t_submit, cpu_submit = time.time(), self_cpu() + sum(cpu(p) for p in jvms)
    rc = 0
    try:
        job_sql(t_env, events, os.path.join(tmp, "sink"), int(parallelism)).wait()
        t_done, cpu_done = time.time(), self_cpu() + sum(cpu(p) for p in jvms)
        rows = join_parts(os.path.join(tmp, "sink"), out)
    except Exception as e:  # noqa: BLE001 - reported, then the JVM is still stopped
        print(f"flink: job failed: {e}", file=sys.stderr)
        t_done, cpu_done, rows, rc = time.time(), self_cpu() + sum(cpu(p) for p in jvms), 0, 1
    stop(jvms)
    shutil.rmtree(tmp, ignore_errors=True)
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    print(f"flink phases: start-up {t_submit - t0:.2f}s/{cpu_submit:.2f} CPU-s, "
          f"job {t_done - t_submit:.2f}s/{cpu_done - cpu_submit:.2f} CPU-s, "
          f"stop {time.time() - t_done:.2f}s/{total - cpu_done:.2f} CPU-s; "
          f"cpu python {me.ru_utime + me.ru_stime:.2f}s jvm {kids.ru_utime + kids.ru_stime:.2f}s; "
          f"peak rss python {me.ru_maxrss / 1024:.0f} MiB jvm {kids.ru_maxrss / 1024:.0f} MiB; "
          f"rows {rows}", file=sys.stderr)
    sys.stderr.flush()
    os._exit(rc)  # py4j's finalizers would try to reach the stopped JVM


if __name__ == "__main__":
    main(*sys.argv[1:4])
