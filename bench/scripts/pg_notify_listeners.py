"""How long a PostgreSQL NOTIFY to one listening session takes to arrive, by how many
other sessions of the same database LISTEN (each on a channel of its own, so none of
them is notified).

Why: issue 20 part 3 asks for a handover p99 under 5 ms with 100 waiting processes. On
PostgreSQL a waiting process hears its wake-up by LISTEN on a channel of its own, yet up
to PostgreSQL 18 a NOTIFY signals every backend of the database that listens on any
channel (async.c, SignalBackends), and each of them wakes to read the shared queue: the
picked session competes with all the others for the CPU. This measures that cost alone,
without the library.

Usage: python3 bench/scripts/pg_notify_listeners.py [COUNTS...]   (default 0 10 25 50 75)
Needs psycopg2 (pip install psycopg2-binary) and a server at PGDSN (default
host=127.0.0.1 port=5432 user=postgres dbname=test) allowing COUNT + 2 connections.
"""

import os
import select
import statistics
import sys
import time

import psycopg2

DSN = os.environ.get("PGDSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
ROUNDS = 200


def connect():
    conn = psycopg2.connect(DSN)
    conn.autocommit = True
    return conn


def measure(others):
    idle = []
    for i in range(others):
        conn = connect()
        conn.cursor().execute(f"LISTEN bench_other_{i}")
        idle.append(conn)
    target = connect()
    target.cursor().execute("LISTEN bench_picked")
    sender = connect()
    cursor = sender.cursor()
    latencies = []
    try:
        for _ in range(ROUNDS):
            start = time.perf_counter()
            cursor.execute("NOTIFY bench_picked")
            while True:
                select.select([target], [], [], 5)
                target.poll()
                if target.notifies:
                    target.notifies.clear()
                    break
            latencies.append((time.perf_counter() - start) * 1e6)
    finally:
        for conn in idle + [target, sender]:
            conn.close()
    latencies.sort()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99)]


def main():
    counts = [int(arg) for arg in sys.argv[1:]] or [0, 10, 25, 50, 75]
    print("| other listening sessions | NOTIFY -> heard p50 | p99 |")
    print("|---|---|---|")
    for others in counts:
        p50, p99 = measure(others)
        print(f"| {others} | {p50:.0f} µs | {p99:.0f} µs |", flush=True)


if __name__ == "__main__":
    main()
