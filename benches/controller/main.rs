//! The controller against the local control plane, measured against what the API server itself
//! can do. `cargo bench --bench controller` (or `make bench`) runs the full scale and prints a
//! table; `cargo test` runs the same code at a tiny scale, as a check that it works.
//!
//! Every figure is taken in the same run as its baseline: a plain client writing Secrets of the
//! same size as the controller's, at the best concurrency found. Figures go to
//! `target/bench/controller.json`.
//!
//! The same run puts cert-manager beside it (see [`cert_manager`]): the same credentials, on
//! the same API server, P-256 and RSA-4096, with cert-manager's default and tuned client limits.
//! `BENCH_SCALE=N` runs this controller alone at N Kubeconfigs (100,000 takes most of an hour);
//! `BENCH_RSA=N` only N RSA-4096 credentials, from this controller and from cert-manager, beside
//! `openssl genpkey`.
//!
//! `BENCH_PPROF=<folder>` adds CPU profiles of the API server through the floor and each batch
//! of this controller (`go tool pprof` reads them).
//!
//! `BENCH_CONTROLLER=path` measures another build of the controller: an older commit's, for a
//! comparison on the same machine on the same day (CPU time per Kubeconfig varies by a tenth
//! from one day to the next here).

mod cert_manager;

use kubeconfig_authority_testenv as support;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use kubeconfig_authority::api::{Authority, Kubeconfig};
use serde_json::json;
use support::{ControlPlane, Process};

const BIN: &str = env!("CARGO_BIN_EXE_kubeconfig-authority");

struct Scale {
    single: usize,
    bulk: Vec<usize>,
    /// validity and renewBefore of the largest bulk batch, which is also the renewal storm.
    storm_validity: &'static str,
    storm_renew_before: &'static str,
    /// How long the whole storm may take.
    storm_deadline: Duration,
    probe: usize,
    settle: Duration,
    /// The renewal storm after the bulk batches (the restart is measured in every mode).
    storm: bool,
    /// The floor, with and without the event, at each bulk size.
    floor: bool,
    /// Credentials with RSA-4096 keys, for this controller and for cert-manager (0: none).
    rsa: usize,
    /// cert-manager's bulk batches, P-256.
    cert_manager: Vec<usize>,
    /// cert-manager's batch of `rsa` RSA-4096 Certificates too (with neither, cert-manager is
    /// not run).
    cert_manager_rsa: bool,
}

/// The key of a credential.
#[derive(Clone, Copy, PartialEq)]
pub enum Key {
    P256,
    Rsa4096,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::P256 => "P-256",
            Key::Rsa4096 => "RSA-4096",
        }
    }
}

pub type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let full = std::env::args().any(|a| a == "--bench");
    // The number of Kubeconfigs in the environment variable `name`, if set.
    let count = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|n| n.parse::<usize>())
            .transpose()
            .map_err(|e| format!("{name} must be a number of Kubeconfigs: {e}"))
    };
    // `BENCH_QUICK=N`: one bulk batch of N, the restart and no storm, to profile a change quickly.
    let quick = count("BENCH_QUICK")?;
    // `BENCH_RSA=N`: N RSA-4096 credentials from this controller and from cert-manager, and
    // `openssl genpkey`, alone.
    let rsa = count("BENCH_RSA")?;
    // `BENCH_SCALE=N`: this controller alone, one bulk batch of N (also the renewal storm).
    let large = count("BENCH_SCALE")?;
    let quick_scale = |n: usize| Scale {
        single: 50,
        bulk: vec![n],
        storm_validity: "24h",
        storm_renew_before: "1h",
        storm_deadline: Duration::ZERO,
        probe: 1_000,
        settle: Duration::from_secs(10),
        storm: false,
        floor: true,
        rsa: 0,
        cert_manager: vec![],
        cert_manager_rsa: false,
    };
    let scale = if let Some(n) = quick {
        quick_scale(n)
    } else if let Some(n) = rsa {
        Scale {
            single: 5,
            bulk: vec![],
            floor: false,
            rsa: n,
            cert_manager_rsa: true,
            ..quick_scale(0)
        }
    } else if let Some(n) = large {
        Scale {
            single: 50,
            bulk: vec![n],
            // Renewals start after the last is issued (about 15 minutes for 100,000 here).
            storm_validity: "50m",
            storm_renew_before: "25m",
            storm_deadline: Duration::from_secs(50 * 60),
            probe: 1_000,
            settle: Duration::from_secs(10),
            storm: true,
            // At 100,000 the floor and the floor without the event would take half an hour
            // and as much of etcd as the controller's own objects.
            floor: false,
            rsa: 0,
            cert_manager: vec![],
            cert_manager_rsa: false,
        }
    } else if full {
        Scale {
            single: 200,
            bulk: vec![1_000, 10_000],
            storm_validity: "6m",
            storm_renew_before: "3m",
            storm_deadline: Duration::from_secs(600),
            probe: 1_000,
            settle: Duration::from_secs(10),
            storm: true,
            floor: true,
            rsa: 100,
            cert_manager: vec![1_000, 10_000],
            cert_manager_rsa: true,
        }
    } else {
        Scale {
            single: 5,
            bulk: vec![20],
            storm_validity: "2m",
            storm_renew_before: "1m",
            storm_deadline: Duration::from_secs(90),
            probe: 50,
            settle: Duration::from_secs(2),
            storm: true,
            floor: true,
            rsa: 2,
            cert_manager: vec![10],
            cert_manager_rsa: true,
        }
    };
    let plane = ControlPlane::start()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(&plane, &scale, full))
}

/// What the bench records from its watch of Kubeconfigs.
#[derive(Default)]
struct Seen {
    /// First time each Kubeconfig was Ready, and its scheduled renewal then.
    ready: HashMap<String, (Instant, Option<i64>, Option<i64>)>,
    /// First time each was Renewed.
    renewed: HashMap<String, Instant>,
}

async fn run(plane: &ControlPlane, scale: &Scale, full: bool) -> Result<(), Error> {
    plane.install_crds().await;
    plane.install_controller_rbac().await;
    let admin = plane.admin().await;
    let ns = plane.namespace("bench").await;
    let ca_secret: Secret = serde_json::from_value(json!({"metadata": {"name": "ca"},
        "stringData": {"ca.crt": plane.ca.cert_pem, "ca.key": plane.ca.key_pem}}))?;
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &ca_secret)
        .await?;
    let authority: Authority = serde_json::from_value(json!({
        "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Authority",
        "metadata": {"name": "ca"},
        "spec": {"server": plane.server, "signer": {"caSecretRef": {"name": "ca"}}},
    }))?;
    Api::<Authority>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &authority)
        .await?;
    let mut report = Report::default();

    // Baseline: a plain client writing Secrets of the controller's size.
    let data = secret_like_ours(plane)?;
    let mut best = (0usize, 0.0f64);
    for concurrency in [8, 32, 64, 128] {
        let took = time_secrets(
            &admin,
            &ns,
            &format!("probe-{concurrency}"),
            scale.probe,
            concurrency,
            &data,
        )
        .await?;
        let rate = scale.probe as f64 / took.as_secs_f64();
        report.line(
            &format!("baseline probe: {concurrency} at once"),
            format!("{rate:.0} Secrets/s"),
        );
        if rate > best.1 {
            best = (concurrency, rate);
        }
    }
    let concurrency = best.0;
    let mut baseline = HashMap::new();
    for &n in &scale.bulk {
        let cpu_before = plane_cpu(plane);
        let took = time_secrets(&admin, &ns, &format!("base-{n}"), n, concurrency, &data).await?;
        let spent = plane_cpu(plane) - cpu_before;
        plane_cpu_line(&mut report, &format!("baseline {n}"), spent, n, "Secret");
        report.line(
            &format!("baseline: {n} Secrets, {concurrency} at once"),
            format!(
                "{:.2} s ({:.0}/s)",
                took.as_secs_f64(),
                n as f64 / took.as_secs_f64()
            ),
        );
        baseline.insert(n, took);
    }
    // The floor: a plain client making, per Kubeconfig, the writes an ideal controller cannot
    // avoid (the bench's create, then the Secret, the status and an event), at the same
    // concurrency. What the API server allows here bounds the bulk ratio from below.
    let mut floor = HashMap::new();
    for &n in scale.bulk.iter().filter(|_| scale.floor) {
        let (started, cpu_before) = (Instant::now(), plane_cpu(plane));
        let profile = PlaneProfile::start(&admin, &format!("floor-{n}"));
        write_floor(&admin, &ns, "floor", n, concurrency, &data, true).await?;
        let (took, spent) = (started.elapsed(), plane_cpu(plane) - cpu_before);
        drop(profile);
        plane_cpu_line(&mut report, &format!("floor {n}"), spent, n, "Kubeconfig");
        report.line(
            &format!("floor: {n} Kubeconfigs by a plain client (4 writes each)"),
            format!(
                "{:.2} s = {:.2}x the baseline",
                took.as_secs_f64(),
                took.as_secs_f64() / baseline[&n].as_secs_f64()
            ),
        );
        report.figure(
            &format!("floor_{n}_ratio"),
            took.as_secs_f64() / baseline[&n].as_secs_f64(),
        );
        floor.insert(n, took);
    }
    // What the `Issued` event costs at bulk: the largest floor again without it.
    if let Some(&n) = scale.bulk.last().filter(|_| scale.floor) {
        let started = Instant::now();
        write_floor(&admin, &ns, "floor-quiet", n, concurrency, &data, false).await?;
        let took = started.elapsed();
        report.line(
            &format!("floor without the event: {n} Kubeconfigs (3 writes each)"),
            format!(
                "{:.2} s = {:.2}x the floor with it",
                took.as_secs_f64(),
                took.as_secs_f64() / floor[&n].as_secs_f64()
            ),
        );
    }
    // The floor's Kubeconfigs, the baseline's and the floor's Secrets go, so that they weigh
    // on nothing that follows.
    remove(
        &admin,
        &ns,
        ListParams::default().labels("bench=floor"),
        ListParams::default().labels("bench in (baseline, floor)"),
    )
    .await?;

    // The controller, built in release mode, as a separate process.
    let health = support::free_port()?;
    let mut controller = start_controller(plane, health, "1");
    wait_ready(health).await?;
    let pid = controller.child.id();

    let seen = Arc::new(Mutex::new(Seen::default()));
    tokio::spawn(watch(admin.clone(), ns.clone(), seen.clone()));

    // Single-object latency, one at a time.
    let latencies = singles(
        scale.single,
        "single-",
        |name| {
            let (admin, ns) = (admin.clone(), ns.clone());
            async move { create(&admin, &ns, &name, "24h", None, Key::P256).await }
        },
        |name| seen.lock().is_ok_and(|s| s.ready.contains_key(name)),
    )
    .await?;
    let p50 = quantile(&latencies, 0.50);
    report.line("single object: apply to Ready, p50", ms(p50));
    report.line(
        "single object: apply to Ready, p99",
        ms(quantile(&latencies, 0.99)),
    );
    report.figure("single_p50_ms", p50.as_secs_f64() * 1e3);
    report.figure(
        "single_p99_ms",
        quantile(&latencies, 0.99).as_secs_f64() * 1e3,
    );

    // Bulk: N at once; the last batch is also the renewal storm.
    let mut rows = Vec::new();
    let last = *scale.bulk.last().unwrap_or(&0);
    for &n in &scale.bulk {
        let storm = n == last;
        let (validity, renew_before) = if storm {
            (scale.storm_validity, Some(scale.storm_renew_before))
        } else {
            ("24h", None)
        };
        let prefix = format!("bulk{n}-");
        let profile = PlaneProfile::start(&admin, &format!("bulk-{n}"));
        let done = batch(
            plane,
            &admin,
            pid,
            n,
            concurrency,
            |i| {
                let (admin, ns) = (admin.clone(), ns.clone());
                async move {
                    create(
                        &admin,
                        &ns,
                        &format!("bulk{n}-{i}"),
                        validity,
                        renew_before,
                        Key::P256,
                    )
                    .await
                }
            },
            || {
                seen.lock().map_or(0, |s| {
                    s.ready.keys().filter(|k| k.starts_with(&prefix)).count()
                })
            },
        )
        .await?
        .complete(n)?;
        drop(profile);
        plane_cpu_line(
            &mut report,
            &format!("bulk {n}"),
            done.plane_cpu,
            n,
            "Kubeconfig",
        );
        let ratio = done.took.as_secs_f64() / baseline[&n].as_secs_f64();
        report.line(
            &format!("bulk {n}: all Ready"),
            format!(
                "{:.2} s = {ratio:.2}x the baseline",
                done.took.as_secs_f64()
            ),
        );
        if let Some(floor) = floor.get(&n) {
            let ratio = done.took.as_secs_f64() / floor.as_secs_f64();
            report.line(
                &format!("bulk {n}: time against the floor"),
                format!("{ratio:.2}x"),
            );
            report.figure(&format!("bulk_{n}_floor_ratio"), ratio);
        }
        report.line(
            &format!("bulk {n}: API writes per Kubeconfig"),
            format!("{:.2}", done.writes / n as f64),
        );
        report.line(
            &format!("bulk {n}: controller CPU per Kubeconfig"),
            format!("{:.3} ms", done.cpu * 1e3 / n as f64),
        );
        report.figure(&format!("bulk_{n}_ratio"), ratio);
        report.figure(
            &format!("bulk_{n}_writes_per_object"),
            done.writes / n as f64,
        );
        report.figure(
            &format!("bulk_{n}_cpu_ms_per_object"),
            done.cpu * 1e3 / n as f64,
        );
        rows.push(Row::new(
            OURS,
            n,
            Key::P256,
            &done,
            memory(pid).1,
            Some(p50),
        ));
    }
    let (rss, peak) = memory(pid);
    report.line(
        &format!(
            "controller memory at {} Kubeconfigs: resident, peak",
            scale.single + scale.bulk.iter().sum::<usize>()
        ),
        format!("{rss:.1} MiB, {peak:.1} MiB"),
    );
    report.figure("rss_mib", rss);
    report.figure("peak_rss_mib", peak);
    // Restart: nothing is reissued; synced = /readyz answers.
    controller.stop(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes_before = api_writes(&admin).await?;
    let started = Instant::now();
    let mut controller = start_controller(plane, health, "2");
    if let Err(e) = wait_ready(health).await {
        let log =
            std::fs::read_to_string(plane.dir.path().join("controller-2.log")).unwrap_or_default();
        let alive = controller.child.try_wait();
        let out = std::process::Command::new("ss")
            .args(["-ltnp"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        return Err(format!(
            "{e} (exit: {alive:?}; listening: {out}); its log ends with: {}",
            &log[log.len().saturating_sub(2000)..]
        )
        .into());
    }
    let synced = started.elapsed();
    let pid = controller.child.id();
    // Close to the wall time when the controller's own work (decoding the lists) is what
    // the restart waits for; far below it when it waits for the API server.
    let restart_cpu = cpu_seconds(pid);
    tokio::time::sleep(scale.settle).await;
    let writes = api_writes(&admin).await? - writes_before;
    let (rss, _) = memory(pid);
    report.line("restart: synced (/readyz) after", ms(synced));
    report.line(
        "restart: controller CPU until synced",
        format!("{restart_cpu:.1} s"),
    );
    report.line(
        &format!(
            "restart: API writes in the {} s after",
            scale.settle.as_secs()
        ),
        format!("{writes:.0}"),
    );
    report.line(
        "restart: resident memory once synced",
        format!("{rss:.1} MiB"),
    );
    report.figure("restart_synced_ms", synced.as_secs_f64() * 1e3);
    report.figure("restart_cpu_s", restart_cpu);
    report.figure("restart_writes", writes);
    report.figure("restart_rss_mib", rss);
    if scale.storm {
        // The renewal storm: the last batch, issued together with a short validity.
        let prefix = format!("bulk{last}-");
        let deadline = scale.storm_deadline;
        let cpu_before = cpu_seconds(pid);
        until_every(deadline, Duration::from_millis(200), || {
            seen.lock()
                .is_ok_and(|s| s.renewed.keys().filter(|k| k.starts_with(&prefix)).count() == last)
        })
        .await?;
        let cpu = cpu_seconds(pid) - cpu_before;
        let seen = seen.lock().map_err(|_| "poisoned")?;
        let epoch = std::time::SystemTime::now();
        let now_unix = epoch.duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
        let to_unix = |t: Instant| now_unix - t.elapsed().as_secs_f64();
        let mut delays = Vec::new();
        let mut expired = 0;
        let mut times = Vec::new();
        for (name, renewed) in seen.renewed.iter().filter(|(k, _)| k.starts_with(&prefix)) {
            let Some((_, Some(scheduled), Some(not_after))) = seen.ready.get(name) else {
                continue;
            };
            let at = to_unix(*renewed);
            times.push(at);
            delays.push(at - *scheduled as f64);
            if at > *not_after as f64 {
                expired += 1;
            }
        }
        delays.sort_by(f64::total_cmp);
        times.sort_by(f64::total_cmp);
        let q = |v: &[f64], q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        report.line(
            &format!("renewal storm: {last} renewed, spread over"),
            format!(
                "{:.1} s",
                times.last().unwrap_or(&0.0) - times.first().unwrap_or(&0.0)
            ),
        );
        report.line(
            "renewal storm: after the scheduled time, p50 / p99",
            format!("{:.2} s / {:.2} s", q(&delays, 0.5), q(&delays, 0.99)),
        );
        report.line(
            "renewal storm: renewed after expiry (late)",
            format!("{expired}"),
        );
        report.line(
            "renewal storm: controller CPU per renewal",
            format!("{:.3} ms", cpu * 1e3 / last as f64),
        );
        report.figure("storm_delay_p99_s", q(&delays, 0.99));
        report.figure("storm_expired", expired as f64);
    }

    // RSA-4096 keys (kcp-operator's choice), a batch at once.
    if scale.rsa > 0 {
        let n = scale.rsa;
        let done =
            batch(
                plane,
                &admin,
                pid,
                n,
                concurrency,
                |i| {
                    let (admin, ns) = (admin.clone(), ns.clone());
                    async move {
                        create(&admin, &ns, &format!("rsa-{i}"), "24h", None, Key::Rsa4096).await
                    }
                },
                || {
                    seen.lock().map_or(0, |s| {
                        s.ready.keys().filter(|k| k.starts_with("rsa-")).count()
                    })
                },
            )
            .await?
            .complete(n)?;
        report.line(
            &format!("RSA-4096: {n} Kubeconfigs, all Ready"),
            format!(
                "{:.2} s, {:.0} ms CPU each",
                done.took.as_secs_f64(),
                done.cpu * 1e3 / n as f64
            ),
        );
        rows.push(Row::new(OURS, n, Key::Rsa4096, &done, memory(pid).1, None));
        if let Some(row) = openssl_keys(n.min(10)) {
            report.line(
                &format!(
                    "RSA-4096: openssl genpkey, {} keys one after another",
                    row.n
                ),
                format!("{:.0} ms CPU each", row.cpu * 1e3 / row.n as f64),
            );
            rows.push(row);
        }
    }
    controller.stop(Duration::from_secs(10));
    plane_memory(plane, &mut report);

    if !scale.cert_manager.is_empty() || scale.cert_manager_rsa {
        // This controller's objects go, so that they weigh on nothing cert-manager does.
        remove(
            &admin,
            &ns,
            ListParams::default(),
            ListParams::default().fields("metadata.name!=ca"),
        )
        .await?;
        let context = cert_manager::Bench {
            plane,
            admin: &admin,
            scale,
            concurrency,
        };
        rows.extend(context.run(&mut report).await?);
    }
    // The baseline again, at the end of the run: how much the API server drifted meanwhile.
    if let Some(&n) = scale.bulk.first() {
        let took = time_secrets(&admin, &ns, &format!("end-{n}"), n, concurrency, &data).await?;
        report.line(
            &format!("baseline again at the end: {n} Secrets"),
            format!(
                "{:.2} s = {:.2}x the first",
                took.as_secs_f64(),
                took.as_secs_f64() / baseline[&n].as_secs_f64()
            ),
        );
    }
    compare(&rows, &baseline, &mut report);

    report.print_and_save(&match (full, scale.bulk.as_slice()) {
        _ if scale.bulk.is_empty() => "controller-rsa.json".to_string(),
        _ if !scale.storm => "controller-quick.json".to_string(),
        (true, [n]) => format!("controller-{n}.json"),
        (true, _) => "controller.json".to_string(),
        (false, _) => "controller-smoke.json".to_string(),
    })
}

/// `openssl genpkey` making `n` RSA-4096 keys, one process each after the other: the key alone,
/// the reference for a credential's CPU. None when openssl is not installed.
fn openssl_keys(n: usize) -> Option<Row> {
    let children_cpu = || {
        // SAFETY: getrusage fills the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        seconds(usage.ru_utime) + seconds(usage.ru_stime)
    };
    let cpu_before = children_cpu();
    let started = Instant::now();
    for _ in 0..n {
        let status = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:4096",
            ])
            // Its progress dots go to stderr.
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(())?;
    }
    let batch = Batch {
        took: started.elapsed(),
        ready: n,
        cpu: children_cpu() - cpu_before,
        plane_cpu: 0.0,
        writes: 0.0,
    };
    Some(Row::new(
        "openssl genpkey (the key alone)",
        n,
        Key::Rsa4096,
        &batch,
        0.0,
        None,
    ))
}

/// Deletes the Kubeconfigs and the Secrets of `ns` that the selectors select.
async fn remove(
    admin: &Client,
    ns: &str,
    kubeconfigs: ListParams,
    secrets: ListParams,
) -> Result<(), Error> {
    delete_all(
        Api::<Kubeconfig>::namespaced(admin.clone(), ns),
        &kubeconfigs,
    )
    .await?;
    delete_all(Api::<Secret>::namespaced(admin.clone(), ns), &secrets).await
}

/// Deletes what `selected` selects. Deleting 100,000 Secrets can outlast the API server's
/// 60 s request timeout (it answers 500 and goes on deleting): the delete is asked again,
/// a few times, until one completes.
pub async fn delete_all<K>(api: Api<K>, selected: &ListParams) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut tries = 0;
    loop {
        match api
            .delete_collection(&DeleteParams::default(), selected)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if tries < 10 => {
                tries += 1;
                eprintln!("deleting {}: {e}; asking again", std::any::type_name::<K>());
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn start_controller(plane: &ControlPlane, health: u16, run: &str) -> Process {
    let health = format!("127.0.0.1:{health}");
    let bin = std::env::var("BENCH_CONTROLLER").unwrap_or_else(|_| BIN.to_string());
    plane.spawn_controller(
        Path::new(&bin),
        &["--health-addr", &health],
        // Warnings, and how long each watch took to list (a restart is mostly those lists).
        &[("RUST_LOG", "warn,kubeconfig_authority::client::watch=info")],
        &format!("controller-{run}"),
    )
}

/// Waits until the controller leads with its caches filled (a follower is ready too, but idle).
async fn wait_ready(port: u16) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((status, body)) = support::http_get(port, "/readyz").await
            && status.contains("200")
            && body.contains("leader")
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("the controller did not become ready".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `done`, looking every millisecond (for latencies).
async fn until(timeout: Duration, done: impl FnMut() -> bool) -> Result<(), Error> {
    until_every(timeout, Duration::from_millis(1), done).await
}

/// Waits until `done`, looking every `every` (a look that counts many objects costs the bench
/// CPU the controllers on this machine would otherwise have).
async fn until_every(
    timeout: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            return Err(format!("not done within {timeout:?}").into());
        }
        tokio::time::sleep(every).await;
    }
    Ok(())
}

/// Creates `n` objects named `<prefix><i>` one at a time, each once the one before is Ready;
/// their times from create to Ready, sorted.
async fn singles<C, Fut>(
    n: usize,
    prefix: &str,
    create: C,
    ready: impl Fn(&str) -> bool,
) -> Result<Vec<Duration>, Error>
where
    C: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut latencies = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}{i}");
        let started = Instant::now();
        create(name.clone()).await?;
        until(Duration::from_secs(30), || ready(&name)).await?;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    Ok(latencies)
}

/// The `q` quantile of sorted `values`.
fn quantile<T: Copy + Default>(values: &[T], q: f64) -> T {
    let i = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len().max(1)) - 1;
    values.get(i).copied().unwrap_or_default()
}

/// What one batch cost: its time to all Ready (or to the timeout), how many were Ready then, the
/// CPU of the process that served it, and the API writes besides the batch's own creates.
struct Batch {
    took: Duration,
    ready: usize,
    /// CPU seconds of the contender's process.
    cpu: f64,
    /// CPU seconds of the API server and etcd.
    plane_cpu: f64,
    writes: f64,
}

impl Batch {
    /// The batch, or an error when not all `n` were Ready.
    fn complete(self, n: usize) -> Result<Self, Error> {
        if self.ready < n {
            return Err(format!("{} of {n} Ready after {:?}", self.ready, self.took).into());
        }
        Ok(self)
    }
}

/// Creates `n` objects (`create(i)`), `concurrency` at once, and waits until `ready()` counts
/// `n` of them, for at most 2 minutes plus a quarter of a second per object.
async fn batch<C, Fut>(
    plane: &ControlPlane,
    admin: &Client,
    pid: u32,
    n: usize,
    concurrency: usize,
    create: C,
    ready: impl Fn() -> usize,
) -> Result<Batch, Error>
where
    C: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let timeout = Duration::from_secs(120) + Duration::from_millis(250) * n as u32;
    let writes_before = api_writes(admin).await?;
    let (cpu_before, plane_before) = (cpu_seconds(pid), plane_cpu(plane));
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(create)
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    // Not done in time is a figure too (cert-manager at scale); the caller decides.
    let _ = until_every(timeout, Duration::from_millis(50), || ready() >= n).await;
    Ok(Batch {
        took: started.elapsed(),
        ready: ready(),
        cpu: cpu_seconds(pid) - cpu_before,
        plane_cpu: plane_cpu(plane) - plane_before,
        writes: api_writes(admin).await? - writes_before - n as f64,
    })
}

const OURS: &str = "kubeconfig-authority";

/// One contender's batch, for the side-by-side table.
pub struct Row {
    who: String,
    n: usize,
    key: Key,
    took: Duration,
    ready: usize,
    cpu: f64,
    plane_cpu: f64,
    writes: f64,
    /// The process's peak resident memory so far, MiB.
    peak: f64,
    /// Single object, create to Ready, p50.
    p50: Option<Duration>,
}

impl Row {
    fn new(who: &str, n: usize, key: Key, batch: &Batch, peak: f64, p50: Option<Duration>) -> Self {
        Row {
            who: who.to_string(),
            n,
            key,
            took: batch.took,
            ready: batch.ready,
            cpu: batch.cpu,
            plane_cpu: batch.plane_cpu,
            writes: batch.writes,
            peak,
            p50,
        }
    }

    /// Objects Ready per second.
    fn rate(&self) -> f64 {
        self.ready as f64 / self.took.as_secs_f64()
    }
}

/// The side-by-side table: every contender's batches, and each against the baseline and against
/// this controller's batch of the same size and key.
fn compare(rows: &[Row], baseline: &HashMap<usize, Duration>, report: &mut Report) {
    if rows.iter().all(|r| r.who == OURS) {
        return;
    }
    println!(
        "\n| | objects | key | all Ready | x baseline | ours x faster | CPU per object | API server and etcd CPU per object | API writes per object | peak RSS | one object, p50 |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for row in rows {
        let ours = rows
            .iter()
            .find(|r| r.who == OURS && r.n == row.n && r.key == row.key)
            .filter(|_| row.who != OURS);
        // Ratios only for a batch that was all Ready.
        let complete = row.ready == row.n;
        let faster = ours
            .filter(|_| complete)
            .map_or(String::new(), |o| format!("{:.1}", o.rate() / row.rate()));
        let against_baseline = baseline
            .get(&row.n)
            .filter(|_| complete)
            .map_or(String::new(), |b| {
                format!("{:.1}", row.took.as_secs_f64() / b.as_secs_f64())
            });
        let ready = if row.ready < row.n {
            format!("{:.1} s: only {} Ready", row.took.as_secs_f64(), row.ready)
        } else {
            format!("{:.2} s", row.took.as_secs_f64())
        };
        let key = row.key.name();
        // Per object only when all were Ready (a part Ready carries the work begun for the rest).
        let per_object = |v: f64, unit: &str| {
            if row.ready < row.n {
                "-".to_string()
            } else {
                format!("{v:.2}{unit}")
            }
        };
        println!(
            "| {} | {} | {key} | {ready} | {against_baseline} | {faster} | {} | {} | {} | {:.0} MiB | {} |",
            row.who,
            row.n,
            per_object(row.cpu * 1e3 / row.n as f64, " ms"),
            // None for what makes no request (OpenSSL).
            if row.plane_cpu > 0.0 {
                per_object(row.plane_cpu * 1e3 / row.n as f64, " ms")
            } else {
                String::new()
            },
            per_object(row.writes / row.n as f64, ""),
            row.peak,
            row.p50.map_or(String::new(), ms),
        );
        let key = format!(
            "{}_{}_{}",
            row.who.replace([' ', '/', ','], "_"),
            key,
            row.n
        );
        report.figure(&format!("{key}_seconds"), row.took.as_secs_f64());
        report.figure(&format!("{key}_ready"), row.ready as f64);
        report.figure(
            &format!("{key}_cpu_ms_per_object"),
            row.cpu * 1e3 / row.n as f64,
        );
        report.figure(
            &format!("{key}_plane_cpu_ms_per_object"),
            row.plane_cpu * 1e3 / row.n as f64,
        );
        report.figure(
            &format!("{key}_writes_per_object"),
            row.writes / row.n as f64,
        );
        report.figure(&format!("{key}_peak_rss_mib"), row.peak);
    }
}

/// The control plane's processes the bench measures beside the contenders.
const PLANE: [&str; 2] = ["kube-apiserver", "etcd"];

/// The API server's and etcd's own resident memory.
fn plane_memory(plane: &ControlPlane, report: &mut Report) {
    for name in PLANE {
        if let Some(pid) = plane.component_pid(name) {
            let (rss, peak) = memory(pid);
            report.line(
                &format!("{name} memory now: resident, peak"),
                format!("{rss:.0} MiB, {peak:.0} MiB"),
            );
        }
    }
}

/// With `BENCH_PPROF=<folder>`, CPU profiles of the API server (Go's `/debug/pprof`) from now
/// until the value is dropped, in slices of 5 s: `<folder>/<name>-<i>.pprof`, every slice that
/// ended before the drop (`go tool pprof -top <folder>/<name>-*.pprof` merges them). Where the
/// API server spends what a phase costs it.
struct PlaneProfile {
    task: Option<tokio::task::JoinHandle<()>>,
    name: String,
    started: Instant,
    slices: Arc<std::sync::atomic::AtomicUsize>,
}

impl PlaneProfile {
    const SLICE: u64 = 5;

    fn start(admin: &Client, name: &str) -> Self {
        let slices = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = std::env::var("BENCH_PPROF").ok().map(|folder| {
            let (admin, name, slices) = (admin.clone(), name.to_string(), slices.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let path = Path::new(&folder).join(format!("{name}-{i}.pprof"));
                    if let Err(e) = Self::slice(&admin, &path).await {
                        eprintln!("profiling the API server into {}: {e}", path.display());
                        return;
                    }
                    slices.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        });
        Self {
            task,
            name: name.to_string(),
            started: Instant::now(),
            slices,
        }
    }

    async fn slice(admin: &Client, path: &Path) -> Result<(), Error> {
        let url = format!("/debug/pprof/profile?seconds={}", Self::SLICE);
        let mut bytes = Vec::new();
        futures::AsyncReadExt::read_to_end(
            &mut std::pin::pin!(
                admin
                    .request_stream(http::Request::get(url).body(Vec::new())?)
                    .await?
            ),
            &mut bytes,
        )
        .await?;
        std::fs::write(path, bytes)?;
        Ok(())
    }
}

impl Drop for PlaneProfile {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let slices = self.slices.load(std::sync::atomic::Ordering::Relaxed);
            eprintln!(
                "profiled the API server for {} s of the {:.1} s of {}",
                slices as u64 * Self::SLICE,
                self.started.elapsed().as_secs_f64(),
                self.name
            );
        }
    }
}

/// CPU seconds the API server and etcd have spent since they started.
fn plane_cpu(plane: &ControlPlane) -> f64 {
    PLANE
        .into_iter()
        .filter_map(|name| plane.component_pid(name))
        .map(cpu_seconds)
        .sum()
}

/// What the API server and etcd spent (`spent` CPU seconds), per object, on the `n` objects of
/// `what`: a controller's requests cost its API server CPU too, on the cores they share here.
fn plane_cpu_line(report: &mut Report, what: &str, spent: f64, n: usize, object: &str) {
    let per_object = spent * 1e3 / n as f64;
    report.line(
        &format!("{what}: API server and etcd CPU per {object}"),
        format!("{per_object:.2} ms"),
    );
    report.figure(
        &format!("{}_plane_cpu_ms_per_object", what.replace(' ', "_")),
        per_object,
    );
}

/// Records when each Kubeconfig is first Ready (with its schedule) and first Renewed.
async fn watch(admin: Client, ns: String, seen: Arc<Mutex<Seen>>) {
    let stream = watcher(
        Api::<Kubeconfig>::namespaced(admin, &ns),
        watcher::Config::default(),
    )
    .default_backoff()
    .applied_objects();
    let mut stream = std::pin::pin!(stream);
    while let Some(Ok(kc)) = stream.next().await {
        let Some(status) = &kc.status else { continue };
        let Some(ready) = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == "True")
        else {
            continue;
        };
        let now = Instant::now();
        let Ok(mut seen) = seen.lock() else { return };
        let name = kc.name_any();
        seen.ready.entry(name.clone()).or_insert((
            now,
            status.renewal_time.as_ref().map(|t| t.0.as_second()),
            status.not_after.as_ref().map(|t| t.0.as_second()),
        ));
        if ready.reason == "Renewed" {
            seen.renewed.entry(name).or_insert(now);
        }
    }
}

async fn create(
    admin: &Client,
    ns: &str,
    name: &str,
    validity: &str,
    renew_before: Option<&str>,
    key: Key,
) -> Result<(), Error> {
    let private_key = match key {
        Key::P256 => json!({"algorithm": "ECDSA", "size": 256}),
        Key::Rsa4096 => json!({"algorithm": "RSA", "size": 4096}),
    };
    let kc: Kubeconfig = serde_json::from_value(json!({
        "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig",
        "metadata": {"name": name},
        "spec": {"authorityRef": {"name": "ca"}, "username": name, "groups": ["bench"],
            "validity": validity, "renewBefore": renew_before, "secretRef": {"name": name},
            "privateKey": private_key},
    }))?;
    Api::<Kubeconfig>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &kc)
        .await?;
    Ok(())
}

/// The data of a Secret like the controller's (a real kubeconfig, certificate and key).
fn secret_like_ours(
    plane: &ControlPlane,
) -> Result<std::collections::BTreeMap<String, ByteString>, Error> {
    let (cert, key) = support::TestCa::leaf_pair();
    let kubeconfig = plane.kubeconfig_for("bench-user", &["bench"]);
    Ok([
        ("kubeconfig", kubeconfig.clone()),
        ("value", kubeconfig),
        ("tls.crt", cert),
        ("tls.key", key),
        ("ca.crt", plane.ca.cert_pem.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect())
}

/// Writes `n` Secrets of `data`, `concurrency` at once, and says how long it took.
async fn time_secrets(
    admin: &Client,
    ns: &str,
    prefix: &str,
    n: usize,
    concurrency: usize,
    data: &std::collections::BTreeMap<String, ByteString>,
) -> Result<Duration, Error> {
    let started = Instant::now();
    let api = Api::<Secret>::namespaced(admin.clone(), ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(format!("{prefix}-{i}")),
                    labels: Some([("bench".to_string(), "baseline".to_string())].into()),
                    ..Default::default()
                },
                data: Some(data.clone()),
                ..Default::default()
            };
            async move { api.create(&PostParams::default(), &secret).await.map(drop) }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(started.elapsed())
}

/// Per Kubeconfig: the create, then what a controller must write for it (the Secret and the
/// status by server-side apply, an event), each step after the one before, as a controller would.
async fn write_floor(
    admin: &Client,
    ns: &str,
    prefix: &str,
    n: usize,
    concurrency: usize,
    data: &std::collections::BTreeMap<String, ByteString>,
    event: bool,
) -> Result<(), Error> {
    let kubeconfigs = Api::<Kubeconfig>::namespaced(admin.clone(), ns);
    let secrets = Api::<Secret>::namespaced(admin.clone(), ns);
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), ns);
    let apply = kube::api::PatchParams::apply("bench-floor").force();
    let create = PostParams {
        field_manager: Some("bench-floor".into()),
        ..PostParams::default()
    };
    futures::stream::iter(0..n)
        .map(|i| {
            let (kubeconfigs, secrets, events, apply, create) = (
                kubeconfigs.clone(),
                secrets.clone(),
                events.clone(),
                apply.clone(),
                create.clone(),
            );
            async move {
                let name = format!("{prefix}{n}-{i}");
                let kc: Kubeconfig = serde_json::from_value(json!({
                    "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig",
                    "metadata": {"name": name, "labels": {"bench": "floor"}},
                    "spec": {"authorityRef": {"name": "ca"}, "username": name, "groups": ["bench"],
                        "validity": "24h", "secretRef": {"name": name}},
                }))?;
                let kc = kubeconfigs.create(&PostParams::default(), &kc).await?;
                let uid = kc.metadata.uid.clone().unwrap_or_default();
                let secret = json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": name, "labels": {"bench": "floor"},
                        "annotations": {"kubeconfig-authority.dev/inputs": "x".repeat(64),
                            "kubeconfig-authority.dev/data": "x".repeat(64)},
                        "ownerReferences": [{"apiVersion": "kubeconfig-authority.dev/v1alpha1",
                            "kind": "Kubeconfig", "name": name, "uid": uid, "controller": true}]},
                    "type": "Opaque", "data": data,
                });
                // Created as the controller creates a new Secret (`client::create`).
                let secret: Secret = serde_json::from_value(secret)?;
                secrets.create(&create, &secret).await?;
                let now = "2026-01-01T00:00:00Z";
                let status = json!({
                    "apiVersion": "kubeconfig-authority.dev/v1alpha1", "kind": "Kubeconfig",
                    "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Issued",
                        "message": format!("Secret {name} holds a valid kubeconfig"),
                        "lastTransitionTime": now, "observedGeneration": 1}],
                        "observedGeneration": 1, "secretName": name, "serialNumber": "x".repeat(32),
                        "notBefore": now, "notAfter": now, "renewalTime": now},
                });
                kubeconfigs
                    .patch_status(&name, &apply, &kube::api::Patch::Apply(&status))
                    .await?;
                if !event {
                    return Ok::<_, Error>(());
                }
                let event: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
                    "metadata": {"name": format!("{name}.floor")},
                    "eventTime": "2026-01-01T00:00:00.000000Z", "type": "Normal", "reason": "Issued",
                    "action": "Issue", "reportingController": "bench-floor",
                    "reportingInstance": "bench-floor",
                    "note": format!("Issued a certificate for {name} (serial {}), valid until {now}, into Secret {name}: no Secret yet", "x".repeat(32)),
                    "regarding": {"apiVersion": "kubeconfig-authority.dev/v1alpha1",
                        "kind": "Kubeconfig", "name": name, "namespace": ns, "uid": uid},
                }))?;
                events.create(&PostParams::default(), &event).await?;
                Ok::<_, Error>(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Writes the API server has served since it started (from its own metrics).
async fn api_writes(admin: &Client) -> Result<f64, Error> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = admin.request_text(request).await?;
    let mut total = 0.0;
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let write = [
            "\"POST\"",
            "\"PUT\"",
            "\"PATCH\"",
            "\"APPLY\"",
            "\"DELETE\"",
            "\"DELETECOLLECTION\"",
        ]
        .iter()
        .any(|v| line.contains(&format!("verb={v}")));
        // Only what the controller and the bench write (not the API server's bookkeeping).
        let ours = [
            "secrets",
            "kubeconfigs",
            "events",
            "rolebindings",
            "clusterrolebindings",
            "roles",
            "certificatesigningrequests",
            "authorities",
        ]
        .iter()
        .any(|r| line.contains(&format!("resource=\"{r}\"")));
        if write && ours {
            total += line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    Ok(total)
}

/// User plus system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    // After the command: state is field 3, utime 14, stime 15 (1-based over the whole line).
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(14) + ticks(15)) / hz.max(1.0)
}

/// Resident and peak resident memory of a process, in MiB.
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

#[derive(Default)]
struct Report {
    lines: Vec<(String, String)>,
    figures: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    fn line(&mut self, what: &str, value: String) {
        println!("{what:<58} {value}");
        self.lines.push((what.to_string(), value));
    }

    fn figure(&mut self, key: &str, value: f64) {
        self.figures.insert(key.to_string(), json!(value));
    }

    fn print_and_save(&self, name: &str) -> Result<(), Error> {
        println!("\n| measurement | figure |\n|---|---|");
        for (what, value) in &self.lines {
            println!("| {what} | {value} |");
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(name);
        let lines: Vec<_> = self
            .lines
            .iter()
            .map(|(k, v)| json!({"measurement": k, "figure": v}))
            .collect();
        std::fs::write(
            &file,
            serde_json::to_string_pretty(&json!({"figures": self.figures, "table": lines}))?,
        )?;
        println!("\nwritten to {}", file.display());
        Ok(())
    }
}
