use clap::Parser;

fn main() -> std::process::ExitCode {
    // Candle's matrix kernels default to one thread per core; the daemon batches instead,
    // so keep them from competing with the actor threads. Set before any thread starts.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    }
    // glibc gives each thread that allocates its own arena (up to 8 per core) and keeps
    // freed memory in them: with actix threads and tokio's blocking pool (parsing, scoring,
    // snapshots, SQLite) that was up to ~12 MB of peak RSS held for nothing in a 1M-event
    // catch-up (BENCHMARKS.md); two arenas showed no measurable cost in speed there. An
    // explicit MALLOC_ARENA_MAX from the environment wins.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no other thread exists yet.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
    // A panic anywhere ends the process (systemd restarts it): actix would otherwise keep
    // running with a dead actor thread.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(error_kind = "panic", "fatal: {info}");
        default_hook(info);
        std::process::abort();
    }));
    let cli = fhir_edge::Cli::parse();
    // A report command piped into `head` or `grep -q` ends quietly when the reader goes
    // away, as Unix tools do (Rust ignores SIGPIPE, and a print to a closed pipe would
    // panic). The daemon keeps ignoring it: a peer that hangs up is an error to handle.
    if cli.only_prints_a_report() {
        // SAFETY: restoring a signal's default disposition; no other thread exists yet.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match fhir_edge::execute(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fhir-edge: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
