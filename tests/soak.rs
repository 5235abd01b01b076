//! A seeded, randomised fault-injection soak. The relay and the agent run as
//! real processes, the app in the test; two senders post webhooks
//! continuously, each with a unique id, and one seed draws a schedule of
//! faults: agent `kill -9` + restart, relay `kill -9` + restart (same data
//! dir and port), agent SIGSTOP/SIGCONT, the agent's link cut or silenced
//! (a proxy between agent and relay), the app stopped and started, and the
//! app slowed down. At the end it checks that every request answered 2xx
//! (202 "held" included) reached the app, that duplicates are only those a
//! crash can cause (counted and reported), that everything arrived within a
//! bound of the last fault, that both SQLite stores pass `integrity_check`,
//! and that no event is stored twice in the capture.
//!
//! `WHTUNNEL_SOAK_SEED` replays a seed's fault schedule;
//! `WHTUNNEL_SOAK_SECS` (load seconds), `WHTUNNEL_SOAK_DRAIN_SECS` (the
//! bound after the last fault), `WHTUNNEL_SOAK_DUPS_PER_CRASH` and
//! `WHTUNNEL_SOAK_RATE` (`LO-HI` per sender) tune it;
//! `bench/soak.sh --minutes N` runs it long.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use common::ports::PortReservation;
use common::process::{Process, Signal, Spawn};
use common::proxy::Proxy;

const TOKEN: &str = "soak-token";
/// Requests one sender has in flight at most (the relay allows 64 per IP).
const SENDER_CONCURRENCY: usize = 16;
/// How long a sender waits for one answer: past the relay's own response
/// timeout (30 s), so every request ends with the relay's answer or an error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(45);
/// Load that keeps running after the last fault, so recovery is under load.
const TAIL: Duration = Duration::from_secs(4);
/// Each sender's rate range by default: the issue's load (two senders at
/// up to about 90 per second each), the same as `bench/soak.sh`. The
/// concurrent drain keeps up with it in a debug build (a 35 s run: 2,888
/// acknowledged, the last fault drained in 5.7 s); the old one-at-a-time
/// drain needed 8-16.
const DEFAULT_RATE: (u32, u32) = (30, 90);
/// How long to keep waiting, past the drain bound, while late deliveries
/// still arrive: tells a slow drain from a lost event.
const LATE_WAIT: Duration = Duration::from_secs(600);
/// Warm-up before the first fault.
const WARM_UP: Duration = Duration::from_secs(2);

/// The run's knobs, from the environment.
struct Params {
    seed: u64,
    /// Seconds of load (at least one full round of faults runs regardless).
    load: Duration,
    /// Every acknowledged event must have reached the app this long after
    /// the last fault ended.
    drain_bound: Duration,
    /// Duplicates allowed per crash (agent or relay `kill -9`).
    dups_per_crash: usize,
    /// Each sender's rate is drawn from this range (requests per second).
    rate: (u32, u32),
}

fn env_num(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
    )
}

impl Params {
    fn from_env() -> Params {
        let mut p = Params {
            seed: env_num("WHTUNNEL_SOAK_SEED").unwrap_or_else(|| rand::random::<u32>().into()),
            load: Duration::from_secs(env_num("WHTUNNEL_SOAK_SECS").unwrap_or(35)),
            drain_bound: Duration::from_secs(env_num("WHTUNNEL_SOAK_DRAIN_SECS").unwrap_or(30)),
            dups_per_crash: 0,
            rate: match std::env::var("WHTUNNEL_SOAK_RATE") {
                Ok(v) => v
                    .split_once('-')
                    .and_then(|(lo, hi)| Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?)))
                    .filter(|&(lo, hi)| 0 < lo && lo <= hi)
                    .unwrap_or_else(|| {
                        panic!("WHTUNNEL_SOAK_RATE={v:?} is not LO-HI requests per second")
                    }),
                Err(_) => DEFAULT_RATE,
            },
        };
        p.dups_per_crash = match env_num("WHTUNNEL_SOAK_DUPS_PER_CRASH") {
            Some(n) => n as usize,
            None => crash_window_dups(p.rate),
        };
        p
    }
}

/// How long before a `kill -9` a live exchange the app already answered
/// may still be unrecorded (the app's answer, the capture's group commit,
/// the ack): such an event is delivered again, as docs/protocol.md says.
/// Loose for a loaded 2-core runner.
const CRASH_WINDOW: Duration = Duration::from_millis(25);

/// Duplicates one crash may cause: every held delivery in flight (the
/// relay's default drain has 16 at once, each possibly answered but not yet
/// recorded), plus the live events two senders at their peak send within
/// [`CRASH_WINDOW`] (at 2 × 90/s: 5). A 30-minute run at 77 + 42/s saw 37
/// duplicates over 158 crashes, at most 7 after one agent kill; a broken
/// dedup redelivers every held event after a restart.
fn crash_window_dups(rate: (u32, u32)) -> usize {
    let drain = whtunnel::relay::HoldDelivery::default().concurrency as usize;
    drain + (2.0 * f64::from(rate.1) * CRASH_WINDOW.as_secs_f64()).ceil() as usize
}

/// One fault and its parameters, drawn from the seed.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `kill -9` the agent; restart it (same data dir) after `down`.
    AgentKill { down: Duration },
    /// `kill -9` the relay; restart it (same data dir and port) after `down`.
    RelayKill { down: Duration },
    /// SIGSTOP the agent, SIGCONT after `frozen` (past 10 s the relay drops it).
    AgentStop { frozen: Duration },
    /// Sever the agent's link and refuse new connections for `down`; or,
    /// when `silent`, stop passing bytes on it for `down`, then sever it.
    LinkCut { down: Duration, silent: bool },
    /// Stop the app (connections refused), start it again after `down`.
    AppStop { down: Duration },
    /// Every answer from the app takes `delay` for `lasting`.
    AppSlow { delay: Duration, lasting: Duration },
}

/// The kinds of [`Fault`], for counting.
const KINDS: [&str; 6] = [
    "agent kill -9",
    "relay kill -9",
    "agent SIGSTOP",
    "link cut",
    "app stopped",
    "app slowed",
];

impl Fault {
    fn kind(self) -> usize {
        match self {
            Fault::AgentKill { .. } => 0,
            Fault::RelayKill { .. } => 1,
            Fault::AgentStop { .. } => 2,
            Fault::LinkCut { .. } => 3,
            Fault::AppStop { .. } => 4,
            Fault::AppSlow { .. } => 5,
        }
    }

    /// How long the fault lasts, restarts aside.
    fn nominal(self) -> Duration {
        match self {
            Fault::AgentKill { down } | Fault::RelayKill { down } => down,
            Fault::AgentStop { frozen } => frozen,
            Fault::LinkCut { down, .. } | Fault::AppStop { down } => down,
            Fault::AppSlow { lasting, .. } => lasting,
        }
    }

    /// A crash: whatever was in flight may reach the app twice.
    fn is_crash(self) -> bool {
        matches!(self, Fault::AgentKill { .. } | Fault::RelayKill { .. })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Fault::AgentKill { down } => write!(f, "agent kill -9, restart after {down:.1?}"),
            Fault::RelayKill { down } => write!(f, "relay kill -9, restart after {down:.1?}"),
            Fault::AgentStop { frozen } => write!(f, "agent SIGSTOP for {frozen:.1?}"),
            Fault::LinkCut {
                down,
                silent: false,
            } => write!(f, "link cut for {down:.1?}"),
            Fault::LinkCut { down, silent: true } => {
                write!(f, "link silent for {down:.1?}, then cut")
            }
            Fault::AppStop { down } => write!(f, "app stopped for {down:.1?}"),
            Fault::AppSlow { delay, lasting } => {
                write!(f, "app answers in {delay:.0?} for {lasting:.1?}")
            }
        }
    }
}

fn ms(rng: &mut StdRng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo..=hi))
}

/// The fault schedule: rounds of all six kinds in a random order, each
/// after a random gap. A pure function of the seed, so a seed replays the
/// same faults in the same order with the same parameters.
struct Schedule(StdRng, Vec<Fault>);

impl Schedule {
    fn new(seed: u64) -> Schedule {
        // Its own stream: the rest of the run's draws never shift it.
        Schedule(StdRng::seed_from_u64(seed ^ 0x5eed_fa17), Vec::new())
    }

    /// The gap before the next fault, and the fault.
    fn next(&mut self) -> (Duration, Fault) {
        let rng = &mut self.0;
        if self.1.is_empty() {
            let mut round = vec![
                Fault::AgentKill {
                    down: ms(rng, 0, 1500),
                },
                Fault::RelayKill {
                    down: ms(rng, 0, 1500),
                },
                Fault::AgentStop {
                    frozen: ms(rng, 500, 12_000),
                },
                {
                    let silent = rng.random_bool(0.3);
                    let down = if silent {
                        ms(rng, 1000, 12_000)
                    } else {
                        ms(rng, 0, 3000)
                    };
                    Fault::LinkCut { down, silent }
                },
                Fault::AppStop {
                    down: ms(rng, 500, 5000),
                },
                Fault::AppSlow {
                    delay: ms(rng, 50, 400),
                    lasting: ms(rng, 1000, 4000),
                },
            ];
            round.shuffle(rng);
            round.reverse();
            self.1 = round;
        }
        let gap = ms(rng, 300, 2000);
        (gap, self.1.pop().unwrap())
    }
}

/// Seconds since the run started.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// The app: answers every request after the current delay and records the
/// id it carries once it has handled it (a request cut off before that, as
/// when the app is stopped, was never handled). Stoppable and restartable
/// on the same port.
struct SoakApp {
    port: PortReservation,
    state: Arc<AppState>,
    running: Option<CancellationToken>,
}

struct AppState {
    clock: Clock,
    delay_ms: AtomicU64,
    /// (id, seconds) per handled request.
    seen: Mutex<Vec<(u64, f64)>>,
    /// Requests without a readable id.
    strangers: AtomicU64,
}

impl SoakApp {
    fn new(clock: Clock, delay: Duration) -> SoakApp {
        let mut app = SoakApp {
            port: PortReservation::new(),
            state: Arc::new(AppState {
                clock,
                delay_ms: AtomicU64::new(delay.as_millis() as u64),
                seen: Mutex::new(Vec::new()),
                strangers: AtomicU64::new(0),
            }),
            running: None,
        };
        app.start();
        app
    }

    fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    fn start(&mut self) {
        let listener = self.port.listen();
        let stop = CancellationToken::new();
        self.running = Some(stop.clone());
        let state = self.state.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                    () = stop.cancelled() => return,
                };
                let (state, stop) = (state.clone(), stop.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    // Stopping closes open connections and cuts off requests
                    // being handled, as a process exiting would.
                    tokio::select! {
                        _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc) => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
    }

    fn stop(&mut self) {
        if let Some(stop) = self.running.take() {
            stop.cancel();
        }
    }
}

impl Drop for SoakApp {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn handle(state: &AppState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let id = req
        .headers()
        .get("x-soak-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let read = Limited::new(req.into_body(), 64 * 1024).collect().await;
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    match (id, read) {
        (Some(id), Ok(_)) => state.seen.lock().unwrap().push((id, state.clock.now())),
        _ => {
            state.strangers.fetch_add(1, Ordering::SeqCst);
        }
    }
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

/// What one sender got for one request.
#[derive(Debug, Clone, Copy)]
struct Answer {
    id: u64,
    answered: f64,
    /// `None`: no HTTP answer (refused, reset, timed out).
    status: Option<u16>,
}

/// Posts to `url` at `rate` per second, at most [`SENDER_CONCURRENCY`] at
/// once, until `stop` (and at most `max` requests); returns every answer.
async fn sender(
    k: u64,
    rate: u32,
    url: String,
    stop: CancellationToken,
    clock: Clock,
    max: u64,
) -> Vec<Answer> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let slots = Arc::new(Semaphore::new(SENDER_CONCURRENCY));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0..max {
        let slot = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = tick.tick() => tokio::select! {
                biased;
                () = stop.cancelled() => break,
                s = slots.clone().acquire_owned() => s.unwrap(),
            },
        };
        let id = (k << 32) | n;
        let req = Request::post(format!("{url}/ev?n={n}"))
            .header("x-soak-id", id.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(
                r#"{{"type":"soak.event","sender":{k},"n":{n}}}"#
            ))))
            .unwrap();
        let (client, answers) = (client.clone(), answers.clone());
        tokio::spawn(async move {
            let status = tokio::time::timeout(ANSWER_TIMEOUT, async {
                let resp = client.request(req).await.ok()?;
                let status = resp.status().as_u16();
                resp.into_body().collect().await.ok()?;
                Some(status)
            })
            .await
            .ok()
            .flatten();
            answers.lock().unwrap().push(Answer {
                id,
                answered: clock.now(),
                status,
            });
            drop(slot);
        });
    }
    // Every request still out ends within its own timeout.
    let all = tokio::time::timeout(
        ANSWER_TIMEOUT + Duration::from_secs(5),
        slots.acquire_many(SENDER_CONCURRENCY as u32),
    )
    .await;
    assert!(
        all.is_ok(),
        "sender {k}: requests still out after {ANSWER_TIMEOUT:?}"
    );
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    answers
}

/// Relay, agent, link and app, and where their files are.
struct Rig {
    work: PathBuf,
    relay_dir: PathBuf,
    agent_dir: PathBuf,
    relay_port: PortReservation,
    relay: Process,
    agent: Process,
    proxy: Proxy,
    app: SoakApp,
    name: String,
}

impl Rig {
    async fn start_relay(work: &Path, relay_dir: &Path, port: &PortReservation) -> Process {
        let relay = Spawn::relay(relay_dir)
            .args(["--listen", &port.addr.to_string(), "--token", TOKEN])
            .env("WHTUNNEL_LOG", "warn")
            .tee(&work.join("relay.log"))
            .start()
            .await;
        assert_eq!(relay.addr(), port.addr, "the relay is back on its port");
        relay.discard_lines();
        relay
    }

    async fn start_agent(work: &Path, agent_dir: &Path, app: &SoakApp, proxy: &Proxy) -> Process {
        let agent = Spawn::listen(&app.port.addr.to_string(), agent_dir)
            .args(["--token", TOKEN, "--relay", &proxy.url()])
            .env("WHTUNNEL_LOG", "info")
            .log_to(&work.join("agent.log"))
            .tee(&work.join("agent.out"))
            .start()
            .await;
        agent.discard_lines();
        agent
    }

    /// The tunnel name in the agent's public URL.
    fn name_of(agent: &Process) -> String {
        let (_, name) = agent.public_url.rsplit_once("/t/").unwrap();
        name.to_string()
    }

    async fn restart_agent(&mut self) {
        self.agent = Rig::start_agent(&self.work, &self.agent_dir, &self.app, &self.proxy).await;
        assert_eq!(
            Rig::name_of(&self.agent),
            self.name,
            "the same name after a restart"
        );
    }

    /// Injects `fault`; returns once everything is back.
    async fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::AgentKill { down } => {
                self.agent.signal(Signal::Kill);
                self.agent.wait().await;
                tokio::time::sleep(down).await;
                self.restart_agent().await;
            }
            Fault::RelayKill { down } => {
                self.relay.signal(Signal::Kill);
                self.relay.wait().await;
                tokio::time::sleep(down).await;
                self.relay = Rig::start_relay(&self.work, &self.relay_dir, &self.relay_port).await;
            }
            Fault::AgentStop { frozen } => {
                self.agent.signal(Signal::Stop);
                tokio::time::sleep(frozen).await;
                self.agent.signal(Signal::Cont);
            }
            Fault::LinkCut {
                down,
                silent: false,
            } => {
                self.proxy.set_down(true);
                self.proxy.sever();
                tokio::time::sleep(down).await;
                self.proxy.set_down(false);
            }
            Fault::LinkCut { down, silent: true } => {
                self.proxy.silence_open();
                tokio::time::sleep(down).await;
                self.proxy.sever();
            }
            Fault::AppStop { down } => {
                self.app.stop();
                tokio::time::sleep(down).await;
                self.app.start();
            }
            Fault::AppSlow { delay, lasting } => {
                let normal = Duration::from_millis(self.app.state.delay_ms.load(Ordering::SeqCst));
                self.app.set_delay(delay);
                tokio::time::sleep(lasting).await;
                self.app.set_delay(normal);
            }
        }
    }
}

/// A fault as it happened.
struct Injected {
    fault: Fault,
    start: f64,
    end: f64,
}

/// Opens `path` and runs `PRAGMA integrity_check`.
fn integrity(path: &Path) -> String {
    let conn = rusqlite::Connection::open(path).unwrap();
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.join("; ")
}

/// Events the relay still holds.
fn held_count(relay_dir: &Path) -> i64 {
    let conn = rusqlite::Connection::open(relay_dir.join("held.db")).unwrap();
    conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_random_faults_loses_nothing_acknowledged() {
    let p = Params::from_env();
    eprintln!(
        "soak seed: {} (WHTUNNEL_SOAK_SEED={} replays this fault schedule); load {:?}, drain bound {:?}",
        p.seed, p.seed, p.load, p.drain_bound
    );
    let mut rng = StdRng::seed_from_u64(p.seed);
    let rates = [
        rng.random_range(p.rate.0..=p.rate.1),
        rng.random_range(p.rate.0..=p.rate.1),
    ];
    let base_delay = ms(&mut rng, 1, 5);
    eprintln!(
        "senders at {} and {} req/s; the app answers in {base_delay:?}",
        rates[0], rates[1]
    );

    let clock = Clock(Instant::now());
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().to_path_buf();
    let relay_dir = work.join("relay");
    let agent_dir = work.join("agent");
    let relay_port = PortReservation::new();
    let app = SoakApp::new(clock, base_delay);
    let relay = Rig::start_relay(&work, &relay_dir, &relay_port).await;
    let proxy = Proxy::start(relay_port.addr).await;
    let agent = Rig::start_agent(&work, &agent_dir, &app, &proxy).await;
    let name = Rig::name_of(&agent);
    let mut rig = Rig {
        work: work.clone(),
        relay_dir: relay_dir.clone(),
        agent_dir: agent_dir.clone(),
        relay_port,
        relay,
        agent,
        proxy,
        app,
        name,
    };

    let load_stop = CancellationToken::new();
    let url = format!("http://{}/t/{}", rig.relay_port.addr, rig.name);
    let max_per_sender = 100 * (p.load.as_secs() + 120);
    let senders: Vec<_> = rates
        .iter()
        .enumerate()
        .map(|(k, &rate)| {
            tokio::spawn(sender(
                k as u64,
                rate,
                url.clone(),
                load_stop.clone(),
                clock,
                max_per_sender,
            ))
        })
        .collect();

    // Faults, one at a time, until the load time is up (and at least one
    // full round of all six kinds has run).
    let mut schedule = Schedule::new(p.seed);
    let mut injected: Vec<Injected> = Vec::new();
    tokio::time::sleep(WARM_UP).await;
    let load_end = p.load.as_secs_f64();
    let max_faults = 10 * (p.load.as_secs() as usize + 60);
    for i in 0..max_faults {
        let (gap, fault) = schedule.next();
        tokio::time::sleep(gap).await;
        let start = clock.now();
        if i >= KINDS.len() && start + (fault.nominal() + TAIL).as_secs_f64() > load_end {
            break;
        }
        eprintln!("{start:7.1}s fault {}: {fault}", i + 1);
        rig.inject(fault).await;
        injected.push(Injected {
            fault,
            start,
            end: clock.now(),
        });
    }
    let last_fault_end = injected.last().map_or(0.0, |f| f.end);
    tokio::time::sleep(TAIL).await;
    load_stop.cancel();
    let mut answers = Vec::new();
    for s in senders {
        answers.extend(s.await.unwrap());
    }
    let load_secs = clock.now();

    // Drain: every acknowledged id reaches the app within the bound.
    let acked: HashMap<u64, f64> = answers
        .iter()
        .filter(|a| a.status.is_some_and(|s| (200..300).contains(&s)))
        .map(|a| (a.id, a.answered))
        .collect();
    let deadline = last_fault_end + p.drain_bound.as_secs_f64();
    let missing = loop {
        let seen: std::collections::HashSet<u64> = rig
            .app
            .state
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.0)
            .collect();
        let missing: Vec<u64> = acked
            .keys()
            .filter(|id| !seen.contains(id))
            .copied()
            .collect();
        if missing.is_empty() || clock.now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Late is not lost: while deliveries still come in, wait on (at most
    // LATE_WAIT), so a slow drain and a lost event are told apart.
    let mut lost = missing.clone();
    let late_until = clock.now() + LATE_WAIT.as_secs_f64();
    let mut progress_at = clock.now();
    while !lost.is_empty() && clock.now() < late_until && clock.now() - progress_at < 15.0 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let seen: std::collections::HashSet<u64> = rig
            .app
            .state
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.0)
            .collect();
        let before = lost.len();
        lost.retain(|id| !seen.contains(id));
        if lost.len() < before {
            progress_at = clock.now();
        }
    }
    // Then the relay's queue empties (acknowledgements trail deliveries).
    let mut held_left = held_count(&relay_dir);
    for _ in 0..100 {
        if held_left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        held_left = held_count(&relay_dir);
    }

    // Crash both, then check the stores as a crash leaves them.
    rig.agent.signal(Signal::Kill);
    rig.agent.wait().await;
    rig.relay.signal(Signal::Kill);
    rig.relay.wait().await;
    let capture_db = agent_dir.join("capture.db");
    let held_db = relay_dir.join("held.db");
    let capture_ok = integrity(&capture_db);
    let held_ok = integrity(&held_db);
    let conn = rusqlite::Connection::open(&capture_db).unwrap();
    let twice: Vec<(String, i64)> = conn
        .prepare(
            "SELECT relay_event_id, COUNT(*) FROM exchanges
             WHERE relay_event_id IS NOT NULL AND outcome IN ('answered', 'undelivered')
             GROUP BY relay_event_id HAVING COUNT(*) > 1",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let captured: i64 = conn
        .query_row("SELECT COUNT(*) FROM exchanges", [], |r| r.get(0))
        .unwrap();

    // Tally.
    let seen = rig.app.state.seen.lock().unwrap().clone();
    let mut first_seen: HashMap<u64, f64> = HashMap::new();
    let mut dup_ids = Vec::new();
    for &(id, t) in &seen {
        match first_seen.entry(id) {
            std::collections::hash_map::Entry::Occupied(_) => dup_ids.push(id),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(t);
            }
        }
    }
    let sent_ids: std::collections::HashSet<u64> = answers.iter().map(|a| a.id).collect();
    let unknown = first_seen
        .keys()
        .filter(|id| !sent_ids.contains(id))
        .count();
    let strangers = rig.app.state.strangers.load(Ordering::SeqCst);
    // A duplicate is blamed on the fault under way when the app first
    // handled it, or else the next one: a kill lands a moment after the
    // fault begins, so "began after" would blame the fault after it.
    let mut dups_by_fault = vec![0usize; injected.len()];
    let mut unexplained_dups = Vec::new();
    for id in &dup_ids {
        let t1 = first_seen[id];
        match injected.iter().position(|f| f.end >= t1) {
            Some(i) => dups_by_fault[i] += 1,
            None => unexplained_dups.push(*id),
        }
    }
    // Drain per fault: how long after it ended the last event acknowledged
    // by then (and not yet delivered) reached the app.
    let mut slowest = (0.0f64, None);
    for (i, f) in injected.iter().enumerate() {
        let drained = acked
            .iter()
            .filter(|(_, &answered)| answered <= f.end)
            .filter_map(|(id, _)| first_seen.get(id))
            .filter(|&&t| t > f.end)
            .fold(0.0f64, |m, &t| m.max(t - f.end));
        if drained > slowest.0 {
            slowest = (drained, Some(i));
        }
    }
    let final_drain = acked
        .keys()
        .filter_map(|id| first_seen.get(id))
        .fold(0.0f64, |m, &t| m.max(t - last_fault_end));

    let mut by_status: std::collections::BTreeMap<String, usize> = Default::default();
    for a in &answers {
        let key = a.status.map_or("no answer".to_string(), |s| s.to_string());
        *by_status.entry(key).or_default() += 1;
    }
    let mut by_kind = [0usize; 6];
    let mut dups_by_kind = [0usize; 6];
    for (i, f) in injected.iter().enumerate() {
        by_kind[f.fault.kind()] += 1;
        dups_by_kind[f.fault.kind()] += dups_by_fault[i];
    }
    let crashes: usize = injected.iter().filter(|f| f.fault.is_crash()).count();

    eprintln!("--- soak summary (seed {}) ---", p.seed);
    eprintln!(
        "load {load_secs:.0} s; {} requests sent, answers {by_status:?}",
        answers.len()
    );
    eprintln!(
        "events: {} acknowledged (2xx), {} delivered to the app ({} deliveries), {} exchanges in the capture",
        acked.len(),
        first_seen.len(),
        seen.len(),
        captured
    );
    let faults: Vec<String> = KINDS
        .iter()
        .zip(by_kind)
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    eprintln!("faults: {} ({})", injected.len(), faults.join(", "));
    let dups: Vec<String> = KINDS
        .iter()
        .zip(dups_by_kind)
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    eprintln!(
        "duplicates: {} over {crashes} crashes ({}){}",
        dup_ids.len(),
        if dups.is_empty() {
            "none".to_string()
        } else {
            dups.join(", ")
        },
        if unexplained_dups.is_empty() {
            String::new()
        } else {
            format!("; {} after the last fault", unexplained_dups.len())
        }
    );
    let answer_of: HashMap<u64, &Answer> = answers.iter().map(|a| (a.id, a)).collect();
    for id in dup_ids.iter().take(20) {
        let times: Vec<String> = seen
            .iter()
            .filter(|s| s.0 == *id)
            .map(|s| format!("{:.2}s", s.1))
            .collect();
        let a = answer_of.get(id);
        eprintln!(
            "  duplicate s{}-{}: handled at {}; sender got {:?} at {:.2}s",
            id >> 32,
            id & 0xffff_ffff,
            times.join(", "),
            a.and_then(|a| a.status),
            a.map_or(0.0, |a| a.answered)
        );
    }
    match slowest.1 {
        Some(i) => eprintln!(
            "slowest drain: {:.1} s after fault {} ({}); after the last fault: {final_drain:.1} s",
            slowest.0,
            i + 1,
            injected[i].fault
        ),
        None => eprintln!("slowest drain: none held; after the last fault: {final_drain:.1} s"),
    }
    eprintln!(
        "stores: capture {capture_ok}, held {held_ok}; {held_left} events left in the relay's queue"
    );

    let mut failures = Vec::new();
    if missing.len() > lost.len() {
        failures.push(format!(
            "{} acknowledged events reached the app later than {:?} after the last fault \
             (the last {final_drain:.1} s after it): the drain is too slow",
            missing.len() - lost.len(),
            p.drain_bound
        ));
    }
    if !lost.is_empty() {
        let mut sample: Vec<String> = lost
            .iter()
            .take(20)
            .map(|id| {
                format!(
                    "s{}-{} (answered at {:.1}s)",
                    id >> 32,
                    id & 0xffff_ffff,
                    acked[id]
                )
            })
            .collect();
        sample.sort();
        failures.push(format!(
            "{} acknowledged events never reached the app (waited while deliveries went on, \
             {held_left} still in the relay's queue): {}",
            lost.len(),
            sample.join(", ")
        ));
    }
    for (i, f) in injected.iter().enumerate() {
        let n = dups_by_fault[i];
        let allowed = if f.fault.is_crash() {
            p.dups_per_crash
        } else {
            0
        };
        if n > allowed {
            failures.push(format!(
                "{n} duplicates after fault {} at {:.1}s ({}), {allowed} allowed",
                i + 1,
                f.start,
                f.fault
            ));
        }
    }
    if !unexplained_dups.is_empty() {
        failures.push(format!(
            "{} duplicates with no fault after their first delivery",
            unexplained_dups.len()
        ));
    }
    if unknown > 0 || strangers > 0 {
        failures.push(format!(
            "the app saw {unknown} ids nobody sent and {strangers} requests without an id"
        ));
    }
    if capture_ok != "ok" {
        failures.push(format!("capture.db integrity_check: {capture_ok}"));
    }
    if held_ok != "ok" {
        failures.push(format!("held.db integrity_check: {held_ok}"));
    }
    if !twice.is_empty() {
        failures.push(format!(
            "{} events stored twice in the capture, e.g. {:?}",
            twice.len(),
            &twice[..twice.len().min(5)]
        ));
    }
    if held_left != 0 && lost.is_empty() {
        failures.push(format!(
            "{held_left} events still in the relay's queue after every one was delivered"
        ));
    }
    if acked.len() < 200 {
        failures.push(format!(
            "the load did not run: {} acknowledged",
            acked.len()
        ));
    }
    if !failures.is_empty() {
        // Keep the logs and stores as evidence.
        let kept = tmp.keep();
        panic!(
            "soak failed (seed {}; WHTUNNEL_SOAK_SEED={} replays the schedule; logs and stores kept in {}):\n  {}",
            p.seed,
            p.seed,
            kept.display(),
            failures.join("\n  ")
        );
    }
}
