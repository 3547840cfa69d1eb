//! The `tracemesh` binary: parses the command line into a configuration and calls into the
//! library. No logic lives here.

// The allocator: jemalloc, chosen by measurement against the system allocator and mimalloc
// (BENCHMARKS.md, "Allocator"). Two arenas (the worker threads keep their own caches), and
// freed pages go back to the OS after a second rather than ten, which keeps RSS after a burst
// near the system allocator's. Each small size class's thread cache holds at least 64 objects
// (jemalloc's floor is 20): hyper takes a fresh 8 KiB read buffer per request on each side, in
// bursts as wide as the connections that became readable together, and with 20 slots every
// burst went to the arena for slabs (3.5k instructions per request; BENCHMARKS.md, "The
// allocator's thread cache").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
#[cfg(feature = "jemalloc")]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 77] =
    b"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:1000,tcache_nslots_small_min:64\0";
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::{io::IsTerminal, process::ExitCode};

use clap::{Parser, Subcommand};
use tracemesh::config::{self, ProxyArgs, TelemetryConfig};

#[derive(Parser)]
#[command(
    name = "tracemesh",
    version,
    about = "A service-mesh sidecar that traces every hop"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The sidecar: inbound, outbound and admin listeners.
    // Boxed: parsed once; keeps the enum small.
    Proxy(Box<ProxyArgs>),
    /// A local showcase: three services behind proxies, and the traces they produce.
    Demo(tracemesh::demo::DemoArgs),
    /// Init container: iptables rules that redirect the pod's TCP through the proxy.
    Init(tracemesh::k8s::init::InitArgs),
    /// Reads Kubernetes YAML and writes it back with the sidecar injected.
    ///
    /// Like `linkerd inject`, every pod template given is injected unless it is annotated
    /// `tracemesh.io/inject: disabled` or uses the host network. A report goes to stderr.
    Inject(tracemesh::k8s::inject::InjectArgs),
    /// Mutating admission webhook (TLS) that injects the sidecar into new pods.
    Webhook(Box<tracemesh::k8s::webhook::WebhookArgs>),
    /// Checks a sampling rules file and a routes file as the proxy would load them (for a
    /// ConfigMap before it is applied): exit 0 and a summary, or 64 and the first error.
    CheckConfig(CheckConfigArgs),
}

#[derive(clap::Args, Debug)]
struct CheckConfigArgs {
    /// A sampling rules file (YAML).
    #[arg(long)]
    sampling_rules: Option<std::path::PathBuf>,
    /// A routes file (one template per line).
    #[arg(long)]
    routes_file: Option<std::path::PathBuf>,
}

fn check_config(args: &CheckConfigArgs) -> ExitCode {
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let result = (|| -> Result<(), String> {
        if let Some(path) = &args.sampling_rules {
            let rules = tracemesh::telemetry::sampling::rules::Rules::parse(&read(path)?)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            println!(
                "{}: {} sampling rules in force",
                path.display(),
                rules.len()
            );
        }
        if let Some(path) = &args.routes_file {
            let routes = tracemesh::config::routes::Routes::parse_file(&read(path)?)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            println!("{}: {} route templates", path.display(), routes.len());
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracemesh check-config: {e}");
            ExitCode::from(config::EXIT_CONFIG as u8)
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // A bad flag or TRACEMESH_* value is a configuration error like any other: exit 64.
            let _ = e.print();
            return ExitCode::from(config::EXIT_CONFIG as u8);
        }
    };
    // The demo prints a report; its proxies' start-up lines would only clutter it.
    init_logging(match cli.command {
        Command::Demo(_) => "warn",
        Command::Proxy(_)
        | Command::Init(_)
        | Command::Inject(_)
        | Command::Webhook(_)
        | Command::CheckConfig(_) => "info",
    });
    match cli.command {
        Command::Proxy(args) => run_proxy(*args),
        Command::Init(args) => match tracemesh::k8s::init::run(&args) {
            Ok(rules) => {
                tracing::info!(
                    chains = "TRACEMESH_INBOUND,TRACEMESH_OUTBOUND",
                    "iptables rules installed"
                );
                print!("{rules}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tracemesh init: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Inject(args) => match tracemesh::k8s::inject::run(&args) {
            Ok((yaml, reports)) => {
                use std::io::Write as _;
                for r in &reports {
                    match r.outcome {
                        tracemesh::k8s::inject::Outcome::Injected => {
                            eprintln!("{} {:?} injected", r.kind, r.name);
                        }
                        tracemesh::k8s::inject::Outcome::Skipped(why) => {
                            eprintln!("{} {:?} skipped: {}", r.kind, r.name, why.as_str());
                        }
                    }
                }
                match std::io::stdout().lock().write_all(yaml.as_bytes()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("tracemesh inject: writing stdout: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("tracemesh inject: {:#}", anyhow::Error::from(e));
                ExitCode::FAILURE
            }
        },
        Command::Webhook(args) => {
            let rt = runtime(2);
            let result = rt.block_on(async {
                let shutdown = tokio_util::sync::CancellationToken::new();
                let token = shutdown.clone();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    tracing::info!("shutdown signal received");
                    token.cancel();
                });
                tracemesh::k8s::webhook::run(*args, shutdown).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tracemesh webhook: {e:#}");
                    ExitCode::from(config::EXIT_CONFIG as u8)
                }
            }
        }
        Command::CheckConfig(args) => check_config(&args),
        Command::Demo(args) => {
            let rt = runtime(2);
            match rt.block_on(tracemesh::demo::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tracemesh demo: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_proxy(args: ProxyArgs) -> ExitCode {
    let telemetry = match TelemetryConfig::from_lookup(|k| std::env::var(k).ok()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tracemesh: {e}");
            return ExitCode::from(config::EXIT_CONFIG as u8);
        }
    };
    let workers = args.workers.unwrap_or_else(config::default_workers).get();
    // The data path runs on `workers` threads of its own (proxy::workers); this runtime has
    // the admin listener, span export and signals.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the Tokio runtime");
    let result: anyhow::Result<()> = rt.block_on(async {
        let exporter = tracemesh::telemetry::Exporter::from_config(&telemetry)?;
        let proxy_config = tracemesh::proxy::ProxyConfig {
            inbound_listen: args.inbound_listen,
            outbound_listen: args.outbound_listen,
            admin_listen: args.admin_listen,
            app_addr: args.app_addr,
            propagators: args.propagators,
            limits: args.limits(),
            shutdown_grace: args.shutdown_grace,
            policy: tracemesh::telemetry::policy::Sources {
                rules_file: args.sampling_rules.clone(),
                routes_file: args.routes_file.clone(),
                static_routes: args.routes(),
            },
            trusted_cidrs: args.trusted_cidrs.clone(),
            retention: args.retention(),
            observe: args.observe(),
            red_metrics: !args.disable_red_metrics,
            opaque_ports: args.opaque_ports.clone(),
            drain_delay: args.drain_delay,
            workers,
        };
        tracing::info!(
            workers,
            exporter = %telemetry.exporter,
            endpoint = %telemetry.endpoint,
            service = telemetry.service_name(),
            propagators = %args.propagators,
            "starting"
        );
        let running = tracemesh::proxy::start(proxy_config, &telemetry, exporter).await?;
        let token = running.shutdown_token();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received");
            token.cancel();
        });
        running.wait().await;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracemesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The work-stealing runtime of the webhook and the demo (the proxy has its own workers).
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .expect("building the Tokio runtime")
}
