//! The shared-data compare-and-swap protocols of the circuit breaker and the dedup store under
//! interleavings of several Envoy workers (docs/behaviour.md "Where it runs": `--concurrency N` must behave
//! like `--concurrency 1`).
//!
//! Each "worker" is its own [`Plugin`] (Envoy runs one VM per worker) driving streams through the
//! public flow (`on_request_headers`, `on_response_headers`, `on_log`) against one process, the
//! project's test double [`meshguard::testing::Proxy`], whose shared data behaves like Envoy
//! 1.40's: a missing key reads as nothing, a write with cas 0 (or to a missing key) is
//! unconditional, a stale cas fails with a mismatch, every write takes the next process-wide cas.
//! Each stream has its own [`FakeHost`] over that process. The interleaving points are the
//! workers' `shared_get` / `shared_set` calls (and reads and increments of circuit stats), where
//! the host calls its gate: each worker runs in a thread that parks there until a scheduler lets
//! it take that one step, so one schedule is one deterministic run. The schedulers:
//!
//! * [`Dfs`] enumerates every schedule of a small scenario (stateless re-execution with
//!   backtracking over the recorded choice points);
//! * [`Random`] samples seeded schedules of larger ones;
//! * real threads released by a barrier, with no scheduler, for what the OS makes of it.
//!
//! Checked: no lost update (every recorded outcome is in the window, and the window equals a
//! sequential replay of the committed writes; different keys of one dedup bucket all survive), no
//! double transition (each transition logged and counted once over all workers), exactly
//! `half_open_calls` probes, one `first` per dedup key, and bounded retries (a store that always
//! mismatches, or a worker starved by another, gives up after `MAX_CAS_ATTEMPTS` and fails open).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::sync::{Arc, Barrier, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use meshguard::breaker::{self, Calls, Phase, State};
use meshguard::config;
use meshguard::dedup::store::{Bucket, Phase as EntryPhase};
use meshguard::filter::{Plugin, Stream, Verdict, MAX_CAS_ATTEMPTS};
use meshguard::ids::TestEntropy;
use meshguard::metrics;
use meshguard::testing::{self, Commit, FakeHost, Op, Proxy, ProxyRef};

// ---------------------------------------------------------------------------------------------
// The process: one `meshguard::testing::Proxy` (shared data, stats, application log, clock) for
// all workers; each stream of each worker gets a `FakeHost` over it.

/// What a worker was doing when it wrote, for the sequential reference replay (recorded with each
/// commit as the writing host's `label`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Label {
    Configure,
    Request,
    /// Recording a call's outcome (the response, or the end of a reset stream).
    Outcome {
        failure: bool,
    },
}

impl Label {
    fn code(self) -> u8 {
        match self {
            Label::Configure => 0,
            Label::Request => 1,
            Label::Outcome { failure: false } => 2,
            Label::Outcome { failure: true } => 3,
        }
    }

    fn of(commit: &Commit) -> Label {
        match commit.label {
            0 => Label::Configure,
            1 => Label::Request,
            2 => Label::Outcome { failure: false },
            3 => Label::Outcome { failure: true },
            other => panic!("no label {other}"),
        }
    }
}

/// A fresh process: every commit recorded; every clock reading moves the clock on by 1 ns, as a
/// real clock would between calls.
fn new_world() -> ProxyRef {
    let mut proxy = Proxy { clock_step: 1, ..Proxy::default() };
    proxy.shared.record = true;
    Arc::new(Mutex::new(proxy))
}

/// What the checks read of the process.
trait World {
    fn proxy(&self) -> MutexGuard<'_, Proxy>;
    fn metric(&self, name: &str) -> i64;
    fn logs_containing(&self, needle: &str) -> usize;
    fn value(&self, key: &str) -> Vec<u8>;
    fn set_clock(&self, ns: u64);
}

impl World for ProxyRef {
    fn proxy(&self) -> MutexGuard<'_, Proxy> {
        self.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn metric(&self, name: &str) -> i64 {
        let p = self.proxy();
        assert!(p.stats.defined(name), "no metric {name}");
        p.stats.value(name)
    }

    fn logs_containing(&self, needle: &str) -> usize {
        self.proxy().logs.iter().filter(|(_, _, l)| l.contains(needle)).count()
    }

    fn value(&self, key: &str) -> Vec<u8> {
        self.proxy().shared.peek(key).unwrap_or_else(|| panic!("no shared data {key}")).to_vec()
    }

    fn set_clock(&self, ns: u64) {
        self.proxy().clock = ns;
    }
}

// ---------------------------------------------------------------------------------------------
// The gate: workers park at each shared-data call until the scheduler hands them the turn.

struct Gate {
    parked: Vec<Option<Op>>,
    done: Vec<bool>,
    turn: Option<usize>,
}

struct Sched {
    gate: Mutex<Gate>,
    cv: Condvar,
}

impl Sched {
    fn new(workers: usize) -> Sched {
        Sched {
            gate: Mutex::new(Gate { parked: vec![None; workers], done: vec![false; workers], turn: None }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A worker waits here before each shared-data call.
    fn pass(&self, worker: usize, op: Op) {
        let mut g = self.lock();
        g.parked[worker] = Some(op);
        self.cv.notify_all();
        while g.turn != Some(worker) {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.turn = None;
        g.parked[worker] = None;
    }

    fn finish(&self, worker: usize) {
        let mut g = self.lock();
        g.done[worker] = true;
        self.cv.notify_all();
    }

    /// Waits until every worker is parked or done, then lets the chosen one take a step. False
    /// when every worker is done.
    fn step(&self, strategy: &mut dyn Strategy) -> bool {
        let mut g = self.lock();
        while g.turn.is_some() || g.parked.iter().zip(&g.done).any(|(p, d)| p.is_none() && !d) {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        let enabled: Vec<(usize, Op)> = g.parked.iter().enumerate().filter_map(|(w, p)| Some((w, (*p)?))).collect();
        if enabled.is_empty() {
            return false;
        }
        let choice = strategy.choose(&enabled);
        g.turn = Some(enabled[choice].0);
        self.cv.notify_all();
        true
    }
}

/// Picks which parked worker goes next: an index into `enabled` (worker, the call it waits at).
trait Strategy {
    fn choose(&mut self, enabled: &[(usize, Op)]) -> usize;
}

/// Every schedule, depth first: the choices of one run are replayed up to the last one that has
/// an untried alternative, which is taken next. With `bound`, only the schedules with at most
/// that many preemptions (switching away from a worker that could go on) are run, as in CHESS:
/// the count grows polynomially instead of exponentially, and most interleaving bugs need one or two.
#[derive(Default)]
struct Dfs {
    path: Vec<(usize, usize)>,
    pos: usize,
    bound: Option<usize>,
    last: Option<usize>,
    preemptions: usize,
}

impl Strategy for Dfs {
    fn choose(&mut self, enabled: &[(usize, Op)]) -> usize {
        let last = self.last.and_then(|l| enabled.iter().position(|(w, _)| *w == l));
        let allowed: Vec<usize> = match (last, self.bound) {
            (Some(l), Some(bound)) if self.preemptions >= bound => vec![l],
            // The running worker first: the first schedule is the one without preemptions.
            (Some(l), _) => std::iter::once(l).chain((0..enabled.len()).filter(|i| *i != l)).collect(),
            (None, _) => (0..enabled.len()).collect(),
        };
        let n = allowed.len();
        let choice = match self.path.get(self.pos) {
            Some(&(c, recorded)) => {
                assert_eq!(recorded, n, "a replayed schedule diverged: the run is not deterministic");
                c
            }
            None => {
                self.path.push((0, n));
                0
            }
        };
        self.pos += 1;
        let index = allowed[choice];
        if last.is_some_and(|l| l != index) {
            self.preemptions += 1;
        }
        self.last = Some(enabled[index].0);
        index
    }
}

impl Dfs {
    /// Moves to the next unexplored schedule; false when all have been run.
    fn advance(&mut self) -> bool {
        self.pos = 0;
        self.last = None;
        self.preemptions = 0;
        while let Some((c, n)) = self.path.pop() {
            if c + 1 < n {
                self.path.push((c + 1, n));
                return true;
            }
        }
        false
    }
}

struct Random(u64);

impl Strategy for Random {
    fn choose(&mut self, enabled: &[(usize, Op)]) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % enabled.len() as u64) as usize
    }
}

/// Starves `victim`: each time it has read and is about to swap, another worker's write lands
/// first (when another worker can write at all).
struct Starve {
    victim: usize,
    other_wrote: bool,
}

impl Strategy for Starve {
    fn choose(&mut self, enabled: &[(usize, Op)]) -> usize {
        let victim = enabled.iter().position(|(w, _)| *w == self.victim);
        let other = enabled.iter().position(|(w, _)| *w != self.victim);
        match (victim, other) {
            (Some(v), Some(o)) if enabled[v].1 == Op::Set && !self.other_wrote => {
                self.other_wrote = enabled[o].1 == Op::Set;
                o
            }
            (Some(v), _) => {
                if enabled[v].1 == Op::Get {
                    self.other_wrote = false;
                }
                v
            }
            (None, _) => 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One worker's host for one stream.

/// Worker `worker`'s host for a new stream, parked by `sched` at each shared-data call and at
/// each read or increment of a circuit stat (workers may compare those with what they know).
fn worker_host(world: &ProxyRef, worker: usize, sched: Option<&Arc<Sched>>, label: Label) -> FakeHost {
    let mut host = FakeHost::worker(world, worker);
    host.label = label.code();
    host.watch = Some("meshguard_circuit_");
    if let Some(sched) = sched.cloned() {
        host.gate = Some(Box::new(move |worker, op| sched.pass(worker, op)));
    }
    host
}

// ---------------------------------------------------------------------------------------------
// Scripts: what each worker's streams do, in the worker's own order.

#[derive(Clone, Debug)]
enum Step {
    /// Request headers of a new stream `s` (no body).
    Start(usize, Vec<(&'static str, String)>),
    /// The upstream answers stream `s` with a status; the stream completes.
    Respond(usize, u32),
    /// Stream `s` ends without a response (reset).
    Reset(usize),
}

fn get(path: &str) -> Vec<(&'static str, String)> {
    vec![(":method", "GET".into()), (":path", path.into()), (":authority", "svc".into())]
}

fn post_event(event_id: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "POST".into()),
        (":path", "/e".into()),
        (":authority", "svc".into()),
        ("x-event-id", event_id.into()),
    ]
}

/// `n` calls on stream ids from `first`, each answered before the next starts.
fn calls(first: usize, statuses: &[u32]) -> Vec<Step> {
    statuses
        .iter()
        .enumerate()
        .flat_map(|(i, &s)| [Step::Start(first + i, get("/")), Step::Respond(first + i, s)])
        .collect()
}

/// What one stream saw.
#[derive(Clone, Debug, Default)]
struct Seen {
    worker: usize,
    went_upstream: bool,
    local_reply: Option<u32>,
    circuit: Option<String>,
    dedup: Option<String>,
}

fn plugin(json: &str, world: &ProxyRef, worker: usize) -> Plugin {
    let mut host = worker_host(world, worker, None, Label::Configure);
    let plugin = testing::plugin(json, &mut host, "model");
    // on_configure of this worker's VM (before traffic, so not an interleaving point here).
    plugin.init_shared(&mut host).unwrap();
    plugin
}

fn run_worker(
    worker: usize,
    plugin: &Plugin,
    script: &[Step],
    world: &ProxyRef,
    gate: Option<&Arc<Sched>>,
) -> Vec<Seen> {
    let mut entropy = TestEntropy(worker as u64 * 7919 + 1);
    let mut open: HashMap<usize, (Stream, FakeHost, Seen)> = HashMap::new();
    let mut seen = Vec::new();
    for step in script {
        match step {
            Step::Start(s, headers) => {
                let mut host = worker_host(world, worker, gate, Label::Request);
                host.request = headers.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
                let mut stream = Stream::default();
                let verdict = stream.on_request_headers(plugin, &mut host, &mut entropy);
                let mut s_seen = Seen { worker, ..Seen::default() };
                if verdict == Verdict::Stop {
                    // The local reply runs through the encoder path like any response.
                    let status = host.local_replies.last().expect("Stop without a local reply").status;
                    host.response = vec![(":status".into(), status.to_string().into_bytes())];
                    stream.on_response_headers(plugin, &mut host, true);
                    stream.on_log(plugin, &mut host);
                    s_seen.local_reply = Some(status);
                    s_seen.circuit = host.state_str("meshguard.circuit");
                    s_seen.dedup = host.state_str("meshguard.dedup");
                    seen.push(s_seen);
                } else {
                    assert_eq!(verdict, Verdict::Continue);
                    s_seen.went_upstream = true;
                    open.insert(*s, (stream, host, s_seen));
                }
            }
            // Answered locally at its start already.
            Step::Respond(s, _) | Step::Reset(s) if !open.contains_key(s) => {}
            Step::Respond(s, _) | Step::Reset(s) => {
                let (mut stream, mut host, mut s_seen) = open.remove(s).unwrap();
                let status = status_of(step);
                host.label = Label::Outcome { failure: status.is_none_or(|st| st >= 500) }.code();
                if let Some(st) = status {
                    host.response = vec![(":status".into(), st.to_string().into_bytes())];
                    stream.on_response_headers(plugin, &mut host, true);
                }
                stream.on_log(plugin, &mut host);
                s_seen.circuit = host.state_str("meshguard.circuit");
                s_seen.dedup = host.state_str("meshguard.dedup");
                seen.push(s_seen);
            }
        }
    }
    assert!(open.is_empty(), "script left streams open");
    seen
}

fn status_of(step: &Step) -> Option<u32> {
    match step {
        Step::Respond(_, s) => Some(*s),
        _ => None,
    }
}

/// How a run is scheduled.
enum Mode<'a> {
    Scheduled(&'a mut dyn Strategy),
    /// Real threads released together by a barrier.
    Free,
}

/// Runs the workers' scripts (one plugin each) over `world` and returns what every stream saw.
fn run(json: &str, scripts: &[Vec<Step>], world: &ProxyRef, mode: Mode) -> Vec<Seen> {
    run_after(json, &[], scripts, world, mode)
}

/// As [`run`], after each worker ran its `preludes` script alone, one worker after the other (so
/// that each worker's plugin starts the concurrent part with what it learnt, e.g. a circuit copy).
fn run_after(json: &str, preludes: &[Vec<Step>], scripts: &[Vec<Step>], world: &ProxyRef, mode: Mode) -> Vec<Seen> {
    let n = scripts.len();
    let plugins: Vec<Plugin> = (0..n).map(|w| plugin(json, world, w)).collect();
    for (w, prelude) in preludes.iter().enumerate() {
        run_worker(w, &plugins[w], prelude, world, None);
    }
    let sched = matches!(mode, Mode::Scheduled(_)).then(|| Arc::new(Sched::new(n)));
    let barrier = Barrier::new(n);
    std::thread::scope(|scope| {
        let handles: Vec<_> = plugins
            .into_iter()
            .zip(scripts)
            .enumerate()
            .map(|(w, (plugin, script))| {
                let (sched, barrier) = (sched.clone(), &barrier);
                scope.spawn(move || {
                    // Marks the worker done even when it panics, so the scheduler never waits for it.
                    struct Done(Option<Arc<Sched>>, usize);
                    impl Drop for Done {
                        fn drop(&mut self) {
                            if let Some(s) = &self.0 {
                                s.finish(self.1);
                            }
                        }
                    }
                    let _done = Done(sched.clone(), w);
                    if sched.is_none() {
                        barrier.wait();
                    }
                    run_worker(w, &plugin, script, world, sched.as_ref())
                })
            })
            .collect();
        if let (Some(sched), Mode::Scheduled(strategy)) = (&sched, mode) {
            while sched.step(strategy) {}
        }
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    })
}

/// Runs `scenario` under every schedule (with at most `preemptions` preemptions when given);
/// returns how many there were.
fn exhaustive(preemptions: Option<usize>, limit: usize, mut scenario: impl FnMut(&mut dyn Strategy)) -> usize {
    let mut dfs = Dfs { bound: preemptions, ..Dfs::default() };
    let mut schedules = 0;
    loop {
        scenario(&mut dfs);
        schedules += 1;
        assert!(schedules <= limit, "more than {limit} schedules: make the scenario smaller");
        if !dfs.advance() {
            return schedules;
        }
    }
}

fn report(what: &str, schedules: usize, started: Instant) {
    eprintln!("{what}: {schedules} schedules in {:.2?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Circuit breaker.

const KEY_PREFIX: &str = "meshguard/model/circuit/default/";

fn circuit_key(world: &ProxyRef) -> String {
    let key = world.proxy().shared.keys().find(|k| k.starts_with(KEY_PREFIX)).map(str::to_string);
    key.expect("circuit key created at configure")
}

fn breaker_cfg(json: &str) -> meshguard::config::Breaker {
    config::parse(json.as_bytes()).unwrap().rule(None).circuit_breaker.clone().unwrap()
}

fn m(name: &str, tags: &[(&str, &str)]) -> String {
    metrics::name(name, tags)
}

fn transitions(world: &ProxyRef, to: &str) -> i64 {
    world.metric(&m(metrics::CIRCUIT_TRANSITIONS_TOTAL, &[("rule", "default"), ("to", to)]))
}

/// A window big enough for every call, thresholds that never trip: every outcome must land.
const RECORD_ALL: &str = r#"{"circuit_breaker": {"window": {"type": "count", "size": 32}, "minimum_calls": 1000,
    "consecutive_failures": 0}}"#;

/// No lost update: the window holds every recorded outcome, in an order that is a merge of the
/// workers' own orders, and equals the sequential replay of the committed writes.
fn check_every_outcome_recorded(world: &ProxyRef, scripts: &[Vec<Step>]) {
    let cfg = breaker_cfg(RECORD_ALL);
    let key = circuit_key(world);
    let state = State::decode(&world.value(&key), &cfg).expect("circuit value decodes");
    let outcomes: Vec<Vec<bool>> =
        scripts.iter().map(|s| s.iter().filter_map(status_of).map(|st| st >= 500).collect()).collect();
    let total: usize = outcomes.iter().map(Vec::len).sum();
    let Calls::Count { ring, head, len } = &state.window else { panic!("count window") };
    assert_eq!(*len as usize, total, "lost update: {len} outcomes in the window for {total} calls");
    assert_eq!(*head as usize, total);
    assert_eq!(state.phase, Phase::Closed);
    let failures = outcomes.iter().flatten().filter(|f| **f).count();
    assert_eq!(ring.iter().filter(|b| **b & 1 == 1).count(), failures);
    assert_eq!(world.metric(&m(metrics::CIRCUIT_FAILURES_TOTAL, &[("rule", "default")])), failures as i64);

    // Sequential reference: the committed outcome writes, applied one at a time to a fresh state.
    let p = world.proxy();
    let committed: Vec<&Commit> =
        p.shared.commits.iter().filter(|c| c.key == key && matches!(Label::of(c), Label::Outcome { .. })).collect();
    assert_eq!(committed.len(), total, "every outcome is one committed write");
    let mut reference = State::new(&cfg);
    let mut per_worker: Vec<Vec<bool>> = vec![Vec::new(); scripts.len()];
    for c in &committed {
        let Label::Outcome { failure } = Label::of(c) else { unreachable!() };
        per_worker[c.worker].push(failure);
        let t = reference.record(&cfg, 0, false, breaker::CallOutcome { failure, slow: false }, 0);
        assert!(t.is_none());
    }
    assert_eq!(per_worker, outcomes, "commit order is not a merge of the workers' program orders");
    assert_eq!(reference.encode(), state.encode(), "final state differs from the sequential replay");
    let linear: Vec<bool> = ring.iter().take(total).map(|b| b & 1 == 1).collect();
    let replayed: Vec<bool> = committed.iter().map(|c| Label::of(c) == Label::Outcome { failure: true }).collect();
    assert_eq!(linear, replayed);
    assert_eq!(p.logs.len(), 0, "{:?}", p.logs);
    drop(p);
    assert_eq!(world.metric(metrics::ERRORS_TOTAL), 0);
}

#[test]
fn breaker_records_every_outcome_under_every_interleaving_of_two_workers() {
    every_outcome_recorded_under_every_interleaving(
        "breaker, 2 workers x 2 calls",
        &[calls(0, &[500, 200]), calls(10, &[200, 503])],
    );
}

#[test]
fn breaker_records_every_outcome_under_every_interleaving_of_three_workers() {
    every_outcome_recorded_under_every_interleaving(
        "breaker, 3 workers x 1 call",
        &[calls(0, &[500]), calls(10, &[200]), calls(20, &[502])],
    );
}

/// Every schedule (preemption bound 2) of the workers' `scripts` under [`RECORD_ALL`] records
/// every outcome; more than 100 schedules are explored.
fn every_outcome_recorded_under_every_interleaving(label: &str, scripts: &[Vec<Step>]) {
    let started = Instant::now();
    let schedules = exhaustive(Some(2), 100_000, |strategy| {
        let world = new_world();
        run(RECORD_ALL, scripts, &world, Mode::Scheduled(strategy));
        check_every_outcome_recorded(&world, scripts);
    });
    report(label, schedules, started);
    assert!(schedules > 100);
}

#[test]
fn breaker_records_every_outcome_under_random_schedules_and_real_threads() {
    let started = Instant::now();
    let scripts = vec![
        calls(0, &[500, 200, 200, 500, 200]),
        calls(10, &[200, 500, 200, 200, 503]),
        calls(20, &[200, 200, 504, 200, 200]),
    ];
    for seed in 1..=300u64 {
        let world = new_world();
        run(RECORD_ALL, &scripts, &world, Mode::Scheduled(&mut Random(seed * 0x9e37_79b9)));
        check_every_outcome_recorded(&world, &scripts);
    }
    for _ in 0..100 {
        let world = new_world();
        run(RECORD_ALL, &scripts, &world, Mode::Free);
        check_every_outcome_recorded(&world, &scripts);
    }
    report("breaker, 3 workers x 5 calls, 300 random + 100 threaded", 400, started);
}

/// Opens after two failures in a window of four calls (50 %).
const OPENS: &str = r#"{"circuit_breaker": {"window": {"type": "count", "size": 4}, "minimum_calls": 2,
    "failure_rate_threshold": 50, "open_duration": "30s", "half_open_calls": 2, "slow_call_duration": "10s"}}"#;

/// Each transition logged and counted once; the state gauge agrees with the shared state.
fn check_transitions_once(world: &ProxyRef, from_to: &[(&str, &str, i64)]) {
    for (from, to, n) in from_to {
        let line = format!("circuit default {from} -> {to} ");
        assert_eq!(world.logs_containing(&line) as i64, *n, "log lines '{line}'");
        assert_eq!(transitions(world, to), *n, "transitions_total to {to}");
    }
}

#[test]
fn concurrent_failures_open_the_circuit_exactly_once() {
    let started = Instant::now();
    let scripts = vec![calls(0, &[500, 500]), calls(10, &[502, 503])];
    let schedules = exhaustive(Some(2), 100_000, |strategy| {
        let world = new_world();
        let seen = run(OPENS, &scripts, &world, Mode::Scheduled(strategy));
        check_transitions_once(&world, &[("closed", "open", 1), ("open", "half_open", 0)]);
        let cfg = breaker_cfg(OPENS);
        let state = State::decode(&world.value(&circuit_key(&world)), &cfg).unwrap();
        assert_eq!((state.phase, state.generation), (Phase::Open, 1));
        let rejected = seen.iter().filter(|s| s.local_reply == Some(503)).count();
        assert_eq!(world.metric(&m(metrics::CIRCUIT_REJECTED_TOTAL, &[("rule", "default")])), rejected as i64);
        // Every call went upstream or was rejected, and at least the two that opened it went.
        assert!(seen.iter().all(|s| s.went_upstream != s.local_reply.is_some()));
        assert!(seen.iter().filter(|s| s.went_upstream).count() >= 2);
        assert_eq!(world.metric(&m(metrics::CIRCUIT_STATE, &[("rule", "default")])), 2);
    });
    report("open once, 2 workers x 2 failures", schedules, started);
}

/// A window of four that opens at two failures: after four successes it is quiet, and each
/// worker that saw it keeps a copy (answering from it until the rule's epoch moves).
const QUIET: &str = r#"{"circuit_breaker": {"window": {"type": "count", "size": 4}, "minimum_calls": 4,
    "failure_rate_threshold": 50, "open_duration": "30s"}}"#;

#[test]
fn failures_on_a_quiet_circuit_are_seen_by_every_worker_copy() {
    let started = Instant::now();
    // Worker 0 fills the window with successes; worker 1 then reads it (and copies it).
    let preludes = vec![calls(100, &[200, 200, 200, 200]), calls(200, &[200])];
    let scripts = vec![calls(0, &[500, 500]), calls(10, &[200, 200, 200])];
    let cfg = breaker_cfg(QUIET);
    let schedules = exhaustive(Some(2), 200_000, |strategy| {
        let world = new_world();
        let seen = run_after(QUIET, &preludes, &scripts, &world, Mode::Scheduled(strategy));
        let state = State::decode(&world.value(&circuit_key(&world)), &cfg).unwrap();
        // Sequential replay of every committed outcome write: the same window, phase and
        // transitions. (Whether the circuit opens depends on the order: F S S S F leaves one
        // failure in the last four calls.)
        let p = world.proxy();
        let mut reference = State::new(&cfg);
        let mut opened = 0;
        for c in p.shared.commits.iter().filter(|c| c.key.starts_with(KEY_PREFIX)) {
            if let Label::Outcome { failure } = Label::of(c) {
                let generation = reference.generation;
                let t = reference.record(&cfg, generation, false, breaker::CallOutcome { failure, slow: false }, 0);
                opened += i64::from(t.is_some());
            }
        }
        drop(p);
        assert_eq!((reference.window.clone(), reference.phase), (state.window.clone(), state.phase), "{seen:?}");
        check_transitions_once(&world, &[("closed", "open", opened)]);
        assert_eq!(state.generation as i64, opened);
        assert_eq!(world.metric(&m(metrics::CIRCUIT_FAILURES_TOTAL, &[("rule", "default")])), 2);
        // Worker 0's two failures are both in the window unless a later success pushed the first out.
        if opened == 0 {
            assert!(seen.iter().all(|s| s.went_upstream));
        }
        let w1 = seen.iter().filter(|s| s.worker == 1);
        assert!(w1.into_iter().all(|s| s.went_upstream || s.local_reply == Some(503)));
        assert_eq!(world.metric(metrics::ERRORS_TOTAL), 0);
    });
    report("quiet circuit copies, 2 workers", schedules, started);
}

/// Opens the circuit with one worker and no scheduler, then moves the clock past `open_duration`.
fn open_circuit(world: &ProxyRef) {
    run(OPENS, &[calls(900, &[500, 500])], world, Mode::Free);
    check_transitions_once(world, &[("closed", "open", 1)]);
    world.set_clock(31_000_000_000);
}

fn probes(seen: &[Seen]) -> usize {
    seen.iter().filter(|s| s.circuit.as_deref() == Some("half_open")).count()
}

#[test]
fn half_open_admits_exactly_half_open_calls_probes_over_all_workers() {
    let started = Instant::now();
    // Three workers each start two calls before any answer comes back.
    let held = |base: usize| {
        vec![
            Step::Start(base, get("/")),
            Step::Start(base + 1, get("/")),
            Step::Respond(base, 200),
            Step::Respond(base + 1, 200),
        ]
    };
    let scripts = vec![held(0), held(10)];
    let schedules = exhaustive(Some(2), 200_000, |strategy| {
        let world = new_world();
        open_circuit(&world);
        let seen = run(OPENS, &scripts, &world, Mode::Scheduled(strategy));
        assert_eq!(probes(&seen), 2, "probes admitted: {seen:?}");
        check_transitions_once(&world, &[("closed", "open", 1), ("open", "half_open", 1), ("half_open", "closed", 1)]);
        // A call admitted after the close passed as closed; the rest were rejected.
        for s in &seen {
            match s.circuit.as_deref() {
                Some("half_open" | "closed") => assert!(s.went_upstream),
                Some("rejected") => assert_eq!(s.local_reply, Some(503)),
                other => panic!("circuit {other:?}"),
            }
        }
        let state = State::decode(&world.value(&circuit_key(&world)), &breaker_cfg(OPENS)).unwrap();
        assert_eq!(state.phase, Phase::Closed);
    });
    report("half-open probes, 2 workers x 2 held calls", schedules, started);

    // Three workers, sampled.
    let scripts = vec![held(0), held(10), held(20)];
    for seed in 1..=300u64 {
        let world = new_world();
        open_circuit(&world);
        let seen = run(OPENS, &scripts, &world, Mode::Scheduled(&mut Random(seed * 0x2545_f491)));
        assert_eq!(probes(&seen), 2);
        check_transitions_once(&world, &[("open", "half_open", 1), ("half_open", "closed", 1)]);
    }
}

#[test]
fn a_failed_probe_reopens_once_and_late_probe_outcomes_are_ignored() {
    let started = Instant::now();
    let scripts = vec![
        vec![Step::Start(0, get("/")), Step::Respond(0, 500)],
        vec![Step::Start(10, get("/")), Step::Respond(10, 200)],
        vec![Step::Start(20, get("/")), Step::Respond(20, 200)],
    ];
    let schedules = exhaustive(Some(2), 200_000, |strategy| {
        let world = new_world();
        open_circuit(&world);
        let seen = run(OPENS, &scripts, &world, Mode::Scheduled(strategy));
        assert!(probes(&seen) <= 2);
        let worker0 = seen.iter().find(|s| s.worker == 0).unwrap();
        let reopened = world.logs_containing("circuit default half_open -> open ");
        let closed = world.logs_containing("circuit default half_open -> closed ");
        assert!(reopened <= 1 && closed <= 1 && transitions(&world, "open") as usize == 1 + reopened);
        if worker0.circuit.as_deref() == Some("half_open") {
            // The failing probe reopens, unless the other two probes closed the circuit first.
            assert_eq!(reopened + closed, 1, "{seen:?}");
        }
        let state = State::decode(&world.value(&circuit_key(&world)), &breaker_cfg(OPENS)).unwrap();
        let expected = if reopened == 1 {
            Phase::Open
        } else if closed == 1 {
            Phase::Closed
        } else {
            Phase::HalfOpen
        };
        assert_eq!(state.phase, expected);
        if reopened == 1 {
            // Reopened from half-open: the open duration grew (30 s x 2).
            assert_eq!(state.open_duration, 60_000_000_000);
        }
    });
    report("failed probe, 3 workers x 1 call", schedules, started);
}

#[test]
fn exhausted_swaps_fail_open_after_max_cas_attempts() {
    let world = new_world();
    let json = r#"{"circuit_breaker": {"minimum_calls": 1}, "dedup": {}}"#;
    let p = plugin(json, &world, 0);
    world.proxy().shared.always_mismatch = true;
    // A failed call must be recorded (a write): every swap fails.
    let seen = run_worker(0, &p, &calls(0, &[500]), &world, None);
    assert!(seen[0].went_upstream);
    assert_eq!(world.proxy().shared.mismatches[&0], MAX_CAS_ATTEMPTS);
    assert_eq!(world.metric("meshguard_errors_total"), 1);
    assert_eq!(world.logs_containing("compare-and-swap attempts exhausted"), 1);
    // A first-seen event id must be recorded in flight: the request passes untouched.
    let seen = run_worker(0, &p, &[Step::Start(1, post_event("e-1")), Step::Respond(1, 200)], &world, None);
    assert!(seen[0].went_upstream && seen[0].local_reply.is_none());
    assert_eq!(world.metric("meshguard_errors_total"), 2);
    let attempts = world.proxy().shared.mismatches[&0];
    assert!(attempts > MAX_CAS_ATTEMPTS && attempts <= 3 * MAX_CAS_ATTEMPTS, "{attempts} swaps");
}

#[test]
fn a_worker_starved_by_another_gives_up_after_max_cas_attempts_and_fails_open() {
    // Worker 0 records one failure; worker 1 records 40 outcomes, and each of its updates lands
    // between worker 0's read and swap.
    let scripts = vec![calls(0, &[500]), calls(10, &[500; 40])];
    let world = new_world();
    let seen = run(RECORD_ALL, &scripts, &world, Mode::Scheduled(&mut Starve { victim: 0, other_wrote: false }));
    let w0 = seen.iter().find(|s| s.worker == 0).unwrap();
    assert!(w0.went_upstream);
    let p = world.proxy();
    assert_eq!(p.shared.mismatches[&0], MAX_CAS_ATTEMPTS, "worker 0's swaps");
    assert_eq!(p.shared.mismatches.get(&1), None, "worker 1 never lost a swap");
    drop(p);
    assert_eq!(world.metric("meshguard_errors_total"), 1);
}

#[test]
fn contention_between_two_workers_never_exhausts_the_retries_of_a_short_burst() {
    // Lock-freedom bound: a swap fails only when another worker's swap succeeded in between.
    let scripts = vec![calls(0, &[500, 200, 500, 200]), calls(10, &[200, 500, 200, 500])];
    let mut worst = 0;
    for seed in 1..=500u64 {
        let world = new_world();
        run(RECORD_ALL, &scripts, &world, Mode::Scheduled(&mut Random(seed)));
        let p = world.proxy();
        for w in 0..2 {
            let lost = p.shared.mismatches.get(&w).copied().unwrap_or(0);
            let others = p.shared.commits.iter().filter(|c| c.worker != w && Label::of(c) != Label::Configure).count();
            assert!(lost <= others, "worker {w} lost {lost} swaps to {others} writes of others");
            worst = worst.max(lost);
        }
        drop(p);
        assert_eq!(world.metric("meshguard_errors_total"), 0);
    }
    eprintln!("worst failed swaps of one worker over 500 schedules: {worst}");
}

// ---------------------------------------------------------------------------------------------
// Dedup.

const DEDUP: &str = r#"{"dedup": {"max_entries": 8}}"#;

fn dedup_count(world: &ProxyRef, outcome: &str) -> i64 {
    world.metric(&m(metrics::DEDUP_TOTAL, &[("rule", "default"), ("outcome", outcome)]))
}

fn bucket(world: &ProxyRef) -> Bucket {
    let layout = meshguard::dedup::Layout::new(8);
    assert_eq!(layout.buckets, 1);
    let p = world.proxy();
    match p.shared.peek(&layout.key("model", 0)) {
        Some(bytes) => Bucket::decode(bytes, &layout).expect("bucket decodes"),
        None => Bucket::default(),
    }
}

/// The store's only bucket, as left by earlier traffic (an empty bucket: a released key).
fn used_bucket() -> ProxyRef {
    let world = new_world();
    let layout = meshguard::dedup::Layout::new(8);
    world.proxy().shared.set(&layout.key("model", 0), &Bucket::default().encode(), 0, 99, Label::Configure.code());
    world
}

fn one_event(worker: usize, key: &str, status: u32) -> Vec<Step> {
    vec![Step::Start(worker * 10, post_event(key)), Step::Respond(worker * 10, status)]
}

#[test]
fn one_key_on_several_workers_lets_exactly_one_through() {
    for n in [2, 3] {
        let started = Instant::now();
        let scripts: Vec<Vec<Step>> = (0..n).map(|w| one_event(w, "evt-1", 200)).collect();
        let bound = if n == 2 { None } else { Some(2) };
        let schedules = exhaustive(bound, 200_000, |strategy| {
            let world = used_bucket();
            let seen = run(DEDUP, &scripts, &world, Mode::Scheduled(strategy));
            let outcome = |o: &str| seen.iter().filter(|s| s.dedup.as_deref() == Some(o)).count();
            assert_eq!(outcome("first"), 1, "{seen:?}");
            assert_eq!(seen.iter().filter(|s| s.went_upstream).count(), 1);
            assert_eq!(outcome("first") + outcome("in_flight") + outcome("duplicate"), n);
            for s in seen.iter().filter(|s| !s.went_upstream) {
                let expected = if s.dedup.as_deref() == Some("in_flight") { 409 } else { 200 };
                assert_eq!(s.local_reply, Some(expected));
            }
            assert_eq!(dedup_count(&world, "first"), 1);
            assert_eq!(dedup_count(&world, "in_flight"), outcome("in_flight") as i64);
            let b = bucket(&world);
            assert_eq!(b.entries.len(), 1);
            assert_eq!((b.entries[0].phase, b.entries[0].status), (EntryPhase::Completed, 200));
            assert_eq!(world.metric(metrics::DEDUP_ENTRIES), 1);
        });
        report(&format!("dedup one key, {n} workers"), schedules, started);
    }
}

#[test]
fn different_keys_in_one_bucket_are_all_kept() {
    let started = Instant::now();
    let scripts: Vec<Vec<Step>> = (0..3).map(|w| one_event(w, &format!("evt-{w}"), 201)).collect();
    let schedules = exhaustive(Some(2), 200_000, |strategy| {
        let world = used_bucket();
        let seen = run(DEDUP, &scripts, &world, Mode::Scheduled(strategy));
        assert!(seen.iter().all(|s| s.went_upstream && s.dedup.as_deref() == Some("first")));
        let b = bucket(&world);
        assert_eq!(b.entries.len(), 3, "lost update in the bucket: {b:?}");
        assert!(b.entries.iter().all(|e| e.phase == EntryPhase::Completed && e.status == 201));
        assert_eq!(world.metric(metrics::DEDUP_ENTRIES), 3);
    });
    report("dedup three keys one bucket, 3 workers", schedules, started);
}

#[test]
fn a_released_key_is_processed_again_and_never_by_two_at_once() {
    let started = Instant::now();
    // Worker 0's upstream fails (released); worker 1 redelivers the same event and succeeds;
    // worker 2's stream is reset before any response (released).
    let scripts = vec![
        one_event(0, "evt-r", 500),
        one_event(1, "evt-r", 200),
        vec![Step::Start(20, post_event("evt-r")), Step::Reset(20)],
    ];
    let schedules = exhaustive(Some(2), 200_000, |strategy| {
        let world = used_bucket();
        let seen = run(DEDUP, &scripts, &world, Mode::Scheduled(strategy));
        let firsts = dedup_count(&world, "first");
        let released = dedup_count(&world, "released");
        // A stream that went upstream held the key; its filter state says how it ended.
        let held = seen.iter().filter(|s| matches!(s.dedup.as_deref(), Some("first" | "released"))).count();
        assert_eq!(held as i64, firsts, "{seen:?}");
        assert!(seen.iter().all(|s| s.went_upstream == (s.local_reply.is_none())));
        // Every first but the one that completed was released; a key is never held twice at once
        // (each first came after the previous holder's release).
        let completed = bucket(&world).entries.iter().filter(|e| e.phase == EntryPhase::Completed).count() as i64;
        assert_eq!(firsts, released + completed, "{seen:?}");
        let w1 = seen.iter().find(|s| s.worker == 1).unwrap();
        assert_eq!(completed, i64::from(w1.dedup.as_deref() == Some("first")));
        assert!(firsts >= 1);
        assert_eq!(world.metric(metrics::DEDUP_ENTRIES), completed);
        // The key's entry over the committed writes: in flight for one request at a time (a new
        // holder only after a release), and never taken again once completed.
        let layout = meshguard::dedup::Layout::new(8);
        let p = world.proxy();
        let mut last: Option<(EntryPhase, u32)> = None;
        for c in p.shared.commits.iter().filter(|c| c.key == layout.key("model", 0)) {
            let b = Bucket::decode(&c.value, &layout).unwrap();
            let now = b.entries.first().map(|e| (e.phase, e.nonce));
            match (last, now) {
                (Some((EntryPhase::InFlight, a)), Some((EntryPhase::InFlight, b))) => assert_eq!(a, b, "taken over"),
                (Some((EntryPhase::Completed, _)), Some((EntryPhase::InFlight, _))) => panic!("completed key taken"),
                (Some((EntryPhase::Completed, _)), None) => panic!("completed key released"),
                _ => {}
            }
            last = now;
        }
    });
    report("dedup release, 3 workers", schedules, started);
}

/// A dedup bucket that no request has used yet does not exist in shared data, and Envoy cannot
/// guard the write that creates a key: both workers read "no value" (cas 0), both write
/// unconditionally, and both requests go upstream (or one of two keys is lost). The breaker avoids
/// this by creating its key in `on_configure`; the dedup buckets are created on first use.
#[test]
fn first_use_of_a_bucket_lets_exactly_one_of_two_workers_through() {
    let scripts: Vec<Vec<Step>> = (0..2).map(|w| one_event(w, "evt-1", 200)).collect();
    let schedules = exhaustive(None, 10_000, |strategy| {
        let world = new_world();
        let seen = run(DEDUP, &scripts, &world, Mode::Scheduled(strategy));
        assert_eq!(seen.iter().filter(|s| s.went_upstream).count(), 1, "{seen:?}");
    });
    eprintln!("{schedules} schedules");
}
