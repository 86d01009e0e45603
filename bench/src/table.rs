//! The report as Markdown tables (printed, and pasted into `BENCHMARKS.md`), and the
//! issue's goals checked against it.

use std::fmt::Write as _;

use crate::contention::Contention;
use crate::report::{BackendReport, Goal, Report};

/// A duration given in microseconds, in a unit that suits it.
pub(crate) fn time(us: f64) -> String {
    if us.is_nan() {
        "n/a".to_owned()
    } else if us < 10.0 {
        format!("{us:.1} µs")
    } else if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.0} ms", us / 1e3)
    }
}

fn bytes(value: f64) -> String {
    if value.abs() < 1024.0 {
        format!("{value:.0} B")
    } else if value.abs() < 1024.0 * 1024.0 {
        format!("{:.2} KiB", value / 1024.0)
    } else {
        format!("{:.1} MiB", value / (1024.0 * 1024.0))
    }
}

fn opt(value: Option<f64>, digits: usize) -> String {
    value.map_or("n/a".to_owned(), |v| format!("{v:.digits$}"))
}

/// How a figure grew from the smaller routine count to the larger.
fn growth(small: f64, large: f64) -> String {
    if small.abs() < f64::EPSILON {
        if large.abs() < f64::EPSILON {
            "same (0)".to_owned()
        } else {
            "from 0".to_owned()
        }
    } else {
        format!("×{:.1}", large / small)
    }
}

/// The goals, checked against every backend that has the figure.
pub(crate) fn goals(backends: &[BackendReport]) -> Vec<Goal> {
    let mut goals = Vec::new();
    for b in backends {
        let mut goal = |goal, measured: String, met| {
            goals.push(Goal {
                backend: b.backend,
                goal,
                measured,
                met,
            })
        };
        if let Some(l) = b.latency.as_ref().filter(|_| b.backend != "memory") {
            goal(
                "acquire+release p50 within 1.1× the floor",
                format!("×{:.2} (p99 ×{:.2})", l.ratio_p50, l.ratio_p99),
                l.ratio_p50 <= 1.1,
            );
            if let Some((name, peer)) = &l.peer {
                goal(
                    "acquire+release p50 below the peer library's",
                    format!("{} vs {name} {}", time(l.library.p50_us), time(peer.p50_us)),
                    l.library.p50_us < peer.p50_us,
                );
            }
        }
        if let Some(h) = &b.handover {
            let s = &h.stop_to_acquired;
            goal(
                "graceful handover p50 < 5 ms and p99 < 20 ms",
                format!("p50 {} / p99 {}", time(s.p50_us), time(s.p99_us)),
                s.p50_us < 5_000.0 && s.p99_us < 20_000.0,
            );
        }
        if let Some(c) = &b.crash {
            goal(
                "crash takeover never later than TTL + 100 ms",
                format!(
                    "max {} with TTL {} ms ({:+.0} ms)",
                    time(c.takeover.max_us),
                    c.ttl_ms,
                    c.max_over_ttl_ms
                ),
                c.max_over_ttl_ms <= 100.0,
            );
        }
        if let Some(stopped) = b.scale.as_ref().and_then(|s| s.stopped.as_ref()) {
            goal(
                "every routine count measured",
                stopped.chars().take(120).collect(),
                false,
            );
        }
        if let Some(s) = &b.scale
            && let (Some(small), Some(large)) = (s.points.first(), s.points.last())
        {
            let n = large.raw.routines;
            goal(
                "lease keeping below 5% of one core at the largest count",
                format!("{:.1}% at {n}", large.lease_cpu_percent),
                large.lease_cpu_percent < 5.0,
            );
            // Issue 20 asks for 3 KiB at 100,000 routines; 4 KiB was the goal at 10,000.
            let (memory_goal, limit) = if n >= 100_000 {
                ("under 3 KiB per held routine", 3.0 * 1024.0)
            } else {
                ("under 4 KiB per held routine", 4.0 * 1024.0)
            };
            goal(
                memory_goal,
                format!("{} at {n}", bytes(large.bytes_per_routine)),
                large.bytes_per_routine < limit,
            );
            goal(
                "a constant number of connections",
                format!(
                    "{} idle, {} at {}, {} at {n}",
                    s.idle.sockets, small.raw.sockets, small.raw.routines, large.raw.sockets
                ),
                small.raw.sockets == large.raw.sockets,
            );
        }
        if let Some(c) = &b.contention {
            contention_goals(c, &mut goal);
        }
    }
    goals
}

/// The fleet-scale goals against the smallest and largest W measured.
fn contention_goals(c: &Contention, goal: &mut impl FnMut(&'static str, String, bool)) {
    let measured: Vec<_> = c
        .points
        .iter()
        .filter_map(|p| Some((p.waiters, p.figures.as_ref()?)))
        .collect();
    let (Some((w_small, small)), Some((w_large, large))) = (measured.first(), measured.last())
    else {
        return;
    };
    let h = &large.returned_to_acquired;
    goal(
        "contention: handover p99 < 5 ms at the largest W",
        format!(
            "p99 {} (max {}) at W={w_large}",
            time(h.p99_us),
            time(h.max_us)
        ),
        h.p99_us < 5_000.0,
    );
    if let (Some(a), Some(b)) = (small.requests_per_handover, large.requests_per_handover) {
        goal(
            "contention: requests per handover do not grow with W (at most ×2)",
            format!("{a:.1} at W={w_small}, {b:.1} at W={w_large}"),
            b <= 2.0 * a.max(1.0),
        );
    }
    if let Some(per_s) = large.steady_per_waiter_per_s {
        let per_ttl = per_s * c.ttl_ms as f64 / 1e3;
        goal(
            "contention: steady load per waiter about one request per TTL (at most 1.5)",
            format!("{per_ttl:.2} per TTL ({per_s:.2}/s) at W={w_large}"),
            per_ttl <= 1.5,
        );
    }
    if let Some(conns) = large.connections_per_process {
        goal(
            "contention: one server connection per process",
            format!("{conns:.2} at W={w_large}"),
            conns <= 1.05,
        );
    }
}

/// The whole report as Markdown.
pub(crate) fn markdown(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let s = &report.settings;
    let _ = writeln!(
        out,
        "Machine: {}, {} CPUs, {} GiB, Linux {}, {}; load {} at start, {} at end.\n",
        m.cpu_model, m.cpus, m.memory_gib, m.kernel, m.rustc, m.load_at_start, m.load_at_end
    );
    let _ = writeln!(
        out,
        "### Acquire + release, uncontended ({} iterations, interleaved)\n",
        s.latency_iterations
    );
    out.push_str(
        "| backend | library p50 | library p99 | floor | floor p50 | floor p99 | ×floor p50 | ×floor p99 | via runner p50 | via runner p99 |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for b in &report.backends {
        if let Some(l) = &b.latency {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} |",
                b.backend,
                time(l.library.p50_us),
                time(l.library.p99_us),
                l.floor_label,
                time(l.floor.p50_us),
                time(l.floor.p99_us),
                l.ratio_p50,
                l.ratio_p99,
                time(l.runner.p50_us),
                time(l.runner.p99_us),
            );
        }
    }
    let peers: Vec<_> = report
        .backends
        .iter()
        .filter_map(|b| Some((b.backend, b.latency.as_ref()?)))
        .filter_map(|(backend, l)| Some((backend, l, l.peer.as_ref()?)))
        .collect();
    if !peers.is_empty() {
        out.push_str(
            "\nA peer library in the same iterations, same process and same server (lock + \
             unlock):\n\n\
             | backend | peer | peer p50 | peer p99 | library p50 / peer p50 | peer p50 / floor p50 |\n\
             |---|---|---|---|---|---|\n",
        );
        for (backend, l, (name, peer)) in peers {
            let _ = writeln!(
                out,
                "| {backend} | {name} | {} | {} | {:.2} | {:.2} |",
                time(peer.p50_us),
                time(peer.p99_us),
                l.library.p50_us / peer.p50_us,
                peer.p50_us / l.floor.p50_us,
            );
        }
    }
    out.push_str(
        "\nWhere the time goes: the server's own time per acquire + release (Redis \
         `commandstats`, PostgreSQL `pg_stat_statements`; 500 round trips of each, measured \
         apart), and what is left of the p50 for the client and the network.\n\n\
         | backend | server time, library | server time, floor | library p50 − its server time | floor p50 − its server time |\n\
         |---|---|---|---|---|\n",
    );
    for b in &report.backends {
        if let Some(l) = &b.latency
            && let (Some(library), Some(floor)) = (l.server_library_us, l.server_floor_us)
        {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                b.backend,
                time(library),
                time(floor),
                time(l.library.p50_us - library),
                time(l.floor.p50_us - floor),
            );
        }
    }
    let _ = writeln!(
        out,
        "\n### Graceful handover ({} rounds)\n",
        s.handover_rounds
    );
    out.push_str(
        "| backend | between | SIGTERM → acquired p50 | p99 | max | routine returned → acquired p50 | p99 |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for b in &report.backends {
        if let Some(h) = &b.handover {
            let (t, r) = (&h.stop_to_acquired, &h.returned_to_acquired);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                b.backend,
                if h.across_processes {
                    "processes"
                } else {
                    "runners in one process (shutdown())"
                },
                time(t.p50_us),
                time(t.p99_us),
                time(t.max_us),
                time(r.p50_us),
                time(r.p99_us),
            );
        }
    }
    let _ = writeln!(out, "\n### Crash takeover ({} rounds)\n", s.crash_rounds);
    out.push_str(
        "| backend | between | TTL | takeover p50 | max | p50 / TTL | max / TTL | max − TTL |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for b in &report.backends {
        if let Some(c) = &b.crash {
            let _ = writeln!(
                out,
                "| {} | {} | {} ms | {} | {} | {:.2} | {:.2} | {:+.0} ms |",
                b.backend,
                if c.across_processes {
                    "processes (SIGKILL)"
                } else {
                    "runners in one process (abort())"
                },
                c.ttl_ms,
                time(c.takeover.p50_us),
                time(c.takeover.max_us),
                c.ratio_p50,
                c.ratio_max,
                c.max_over_ttl_ms,
            );
        }
    }
    for b in &report.backends {
        if let Some(e) = &b.expiry {
            let _ = writeln!(
                out,
                "\n### Where {}'s crash takeover goes ({} rounds, TTL {} ms, raw client)\n\n\
                 | lease expired → key deleted (min) | p50 | max | grant round trip p50 | \
                 LeaseRevoke → key deleted p50 | max |\n|---|---|---|---|---|---|\n\
                 | {} | {} | {} | {} | {} | {} |",
                b.backend,
                e.lag.count,
                e.ttl_ms,
                time(e.lag_min_us),
                time(e.lag.p50_us),
                time(e.lag.max_us),
                time(e.grant_rtt.p50_us),
                time(e.revoke.p50_us),
                time(e.revoke.max_us),
            );
        }
    }
    scale_tables(&mut out, report);
    contention_table(&mut out, report);
    out.push_str("\n### Goals\n\n| backend | goal | measured | met |\n|---|---|---|---|\n");
    for g in &report.goals {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            g.backend,
            g.goal,
            g.measured,
            if g.met { "yes" } else { "**no**" }
        );
    }
    for b in &report.backends {
        for error in &b.errors {
            let _ = writeln!(out, "\n{}: measurement failed: {error}", b.backend);
        }
    }
    out
}

fn contention_table(out: &mut String, report: &Report) {
    if report.backends.iter().all(|b| b.contention.is_none()) {
        return;
    }
    let s = &report.settings;
    let _ = writeln!(
        out,
        "\n### Fleet-scale contention: one name, W waiting processes (TTL 2 s; {} handovers per W; steady load over {:.0} s)\n",
        s.contention_rounds, s.contention_window_s
    );
    out.push_str(
        "| backend | W | returned → acquired p50 | p99 | max | SIGTERM → acquired p50 | p99 | requests per handover (mean / max) | steady requests/s, all | per waiter per TTL | connections per process | startup of W |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for b in &report.backends {
        let Some(c) = &b.contention else { continue };
        for p in &c.points {
            let Some(f) = &p.figures else {
                let _ = writeln!(
                    out,
                    "| {} | {} | failed: {} | | | | | | | | | |",
                    b.backend,
                    p.waiters,
                    p.error.as_deref().unwrap_or("unknown").replace('|', "/"),
                );
                continue;
            };
            let (r, t) = (&f.returned_to_acquired, &f.stop_to_acquired);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} ms |",
                b.backend,
                p.waiters,
                time(r.p50_us),
                time(r.p99_us),
                time(r.max_us),
                time(t.p50_us),
                time(t.p99_us),
                opt(f.requests_per_handover, 1),
                opt(f.requests_per_handover_max, 0),
                opt(f.steady_per_s, 1),
                opt(
                    f.steady_per_waiter_per_s.map(|r| r * c.ttl_ms as f64 / 1e3),
                    2
                ),
                opt(f.connections_per_process, 2),
                f.startup_ms,
            );
        }
    }
    out.push_str("\nRequests per second of a holder alone, subtracted from the steady load:");
    for b in &report.backends {
        if let Some(c) = &b.contention {
            let _ = write!(out, " {} {};", b.backend, opt(c.holder_alone_per_s, 2));
        }
    }
    out.push('\n');
}

fn scale_tables(out: &mut String, report: &Report) {
    let s = &report.settings;
    let _ = writeln!(
        out,
        "\n### Scale: one process holding N routines (TTL 5 s, refresh every 1 s; {:.0} s window after {:.0} s settling; idle child subtracted)\n",
        s.scale_window_s, s.scale_settle_s
    );
    out.push_str(
        "| backend | routines | lease keeping, % of one core | RSS per routine | sockets | server requests/s | server CPU, % of one core | startup | shutdown | restarts in window |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for b in &report.backends {
        let Some(scale) = &b.scale else { continue };
        let i = &scale.idle;
        let _ = writeln!(
            out,
            "| {} | 0 (idle) | {:.2} (raw) | {} total | {} | {} (raw) | {} (raw) | | | |",
            b.backend,
            i.cpu_cores * 100.0,
            bytes(i.rss_bytes as f64),
            i.sockets,
            opt(i.server_requests_per_s, 0),
            opt(i.server_cpu_cores.map(|c| c * 100.0), 1),
        );
        for p in &scale.points {
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {} | {} | {} | {} | {} ms | {} ms | {} |",
                b.backend,
                p.raw.routines,
                p.lease_cpu_percent,
                bytes(p.bytes_per_routine),
                p.raw.sockets,
                opt(p.requests_per_s, 0),
                opt(p.server_cpu_percent, 1),
                p.raw.startup_ms,
                p.raw.shutdown_ms,
                p.raw.restarts_in_window,
            );
        }
    }
    for b in &report.backends {
        if let Some(stopped) = b.scale.as_ref().and_then(|s| s.stopped.as_ref()) {
            let _ = writeln!(out, "\n{}: stopped at {stopped}", b.backend);
        }
    }
    out.push_str(
        "\n| backend | growth from the smaller to the larger count: lease CPU | memory above idle | sockets | requests/s |\n\
         |---|---|---|---|---|\n",
    );
    for b in &report.backends {
        let Some(scale) = &b.scale else { continue };
        let (Some(small), Some(large)) = (scale.points.first(), scale.points.last()) else {
            continue;
        };
        let memory = |p: &crate::scale::Point| p.bytes_per_routine * p.raw.routines as f64;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            b.backend,
            growth(small.lease_cpu_percent, large.lease_cpu_percent),
            growth(memory(small), memory(large)),
            growth(small.raw.sockets as f64, large.raw.sockets as f64),
            match (small.requests_per_s, large.requests_per_s) {
                (Some(a), Some(b)) => growth(a, b),
                _ => "n/a".to_owned(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_in_a_fitting_unit() {
        assert_eq!(time(312.4), "312 µs");
        assert_eq!(time(4_567.0), "4.57 ms");
        assert_eq!(time(123_456.0), "123 ms");
        assert_eq!(time(f64::NAN), "n/a");
    }

    #[test]
    fn growth_is_a_factor() {
        assert_eq!(growth(2.0, 21.0), "×10.5");
        assert_eq!(growth(0.0, 0.0), "same (0)");
        assert_eq!(bytes(3.5 * 1024.0), "3.50 KiB");
    }
}
