//! One etcd store as a worker sees it (`dedup.store` `"etcd"`, docs/etcd-store.md): the calls a
//! claim, a completion and a release send, the leases they name, the store's health, and the
//! tick that grants leases ahead and sends the completions and releases. The
//! protocol itself is in [`super::etcd`].

use std::cell::{Cell, RefCell};

use super::etcd::{self, Health, Lease, LeaseTable, Value, Write};
use crate::config::{Etcd, LogLevel};
use crate::filter::{cas_update, Callout, Host};
use crate::metrics::RemoteMetrics;

const SECOND: u64 = 1_000_000_000;
/// Writes a worker sends per tick at most (an outage's backlog drains over a few ticks).
const WRITES_PER_TICK: usize = 256;
/// Attempts at a write that failed fast (a member gone) before the store counts as failing.
const FAST_ATTEMPTS: u8 = 3;

/// `meshguard_dedup_store_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    Claimed,
    Duplicate,
    InFlight,
    Error,
    Timeout,
    Skipped,
}

impl StoreOutcome {
    pub const ALL: [StoreOutcome; 6] = [
        StoreOutcome::Claimed,
        StoreOutcome::Duplicate,
        StoreOutcome::InFlight,
        StoreOutcome::Error,
        StoreOutcome::Timeout,
        StoreOutcome::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StoreOutcome::Claimed => "claimed",
            StoreOutcome::Duplicate => "duplicate",
            StoreOutcome::InFlight => "in_flight",
            StoreOutcome::Error => "error",
            StoreOutcome::Timeout => "timeout",
            StoreOutcome::Skipped => "skipped",
        }
    }
}

/// A call the plugin sent itself (from the tick), by token.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pending {
    Grant {
        ttl: u64,
        window: u64,
    },
    /// `lease`: the lease a completion named (0 for a release).
    Write {
        write: Write,
        sent: u64,
        lease: i64,
    },
}

/// One etcd store of a configuration, in one worker.
#[derive(Debug)]
pub struct EtcdStore {
    pub config: Etcd,
    /// `<prefix><workload>/`: every key of this service.
    pub base: String,
    /// The key lifetimes this store's rules need leases for (`in_flight_ttl`s and `ttl`s).
    ttls: Vec<u64>,
    /// Shared-data keys of the lease table and of the store's up/down state.
    table_key: String,
    state_key: String,
    /// This worker's copy of the leases it has used (refreshed from the table on a miss).
    leases: RefCell<Vec<Lease>>,
    health: Cell<Health>,
    /// Completions and releases to send on the next tick.
    writes: RefCell<Vec<Write>>,
    pending: RefCell<Vec<(u32, Pending)>>,
    pub metrics: RemoteMetrics,
}

impl EtcdStore {
    /// `index` numbers the distinct stores of one plugin (their shared data is apart).
    pub fn new(config: Etcd, workload: &str, plugin: &str, index: usize, metrics: RemoteMetrics) -> Self {
        EtcdStore {
            base: etcd::base(&config.prefix, workload),
            config,
            ttls: Vec::new(),
            table_key: format!("meshguard/{plugin}/etcd/{index}/leases"),
            state_key: format!("meshguard/{plugin}/etcd/{index}/state"),
            leases: RefCell::new(Vec::new()),
            health: Cell::new(Health::default()),
            writes: RefCell::new(Vec::new()),
            pending: RefCell::new(Vec::new()),
            metrics,
        }
    }

    /// Keys of lifetime `ttl` are kept in this store: the tick grants their leases.
    pub fn needs(&mut self, ttl: u64) {
        if !self.ttls.contains(&ttl) {
            self.ttls.push(ttl);
        }
    }

    /// The same store (cluster, authority, prefix): rules that name it share leases and health.
    pub fn serves(&self, config: &Etcd) -> bool {
        self.config.cluster == config.cluster
            && self.config.authority == config.authority
            && self.config.prefix == config.prefix
    }

    pub fn key(&self, id: u128) -> String {
        etcd::key(&self.base, id)
    }

    pub fn timeout(&self) -> u64 {
        self.config.timeout
    }

    /// A call to send to the store.
    pub fn call(&self, path: &'static str, body: Vec<u8>) -> Callout {
        Callout {
            cluster: self.config.cluster.clone(),
            authority: self.config.authority.clone(),
            path,
            body,
            timeout_ms: (self.config.timeout / 1_000_000).max(1) as u32,
        }
    }

    /// The store may be asked now (not cooling off after a failure).
    pub fn usable(&self, now: u64) -> bool {
        self.health.get().usable(now)
    }

    /// The lease for keys of lifetime `ttl` written at `now`: this worker's copy, else the shared
    /// table (one shared-data read per window and worker). `None` before it is granted.
    pub fn lease(&self, host: &mut impl Host, ttl: u64, now: u64) -> Option<i64> {
        let window = etcd::window_of(now, ttl);
        let find = |leases: &[Lease]| leases.iter().find(|l| l.ttl == ttl && l.window == window).map(|l| l.id);
        if let Some(id) = find(&self.leases.borrow()) {
            return Some(id);
        }
        let table = host.shared_get(&self.table_key).ok()??;
        let table = LeaseTable::decode(&table.0)?;
        let mut leases = self.leases.borrow_mut();
        leases.retain(|l| l.window + 1 >= etcd::window_of(now, l.ttl));
        for l in table.leases.iter().filter(|l| l.id != 0) {
            if !leases.contains(l) {
                leases.push(*l);
            }
        }
        find(&leases)
    }

    /// The lease `id` is gone in etcd (an etcd restored from an old snapshot, revoked by hand):
    /// forgotten here and in the table, so that the next tick grants its window again.
    pub fn lease_gone(&self, host: &mut impl Host, id: i64) {
        self.leases.borrow_mut().retain(|l| l.id != id);
        let _ = update_table(host, &self.table_key, |t| t.forget(id));
    }

    /// The store failed at `now` (an error, or slower than `timeout`): not asked again by this
    /// worker for a cool-off; logged once per proxy.
    pub fn failed(&self, host: &mut impl Host, now: u64, why: &str) {
        let mut health = self.health.get();
        if health.failed(now) && self.flip_state(host, 1) {
            host.log(
                LogLevel::Warn,
                &format!(
                    "meshguard: dedup store etcd ({}) is down: {why}; on_error \"{}\" decides until it answers",
                    self.config.cluster,
                    self.config.on_error.as_str()
                ),
            );
        }
        self.health.set(health);
    }

    /// The store answered: back up if it was down (logged once per proxy).
    pub fn answered(&self, host: &mut impl Host) {
        let mut health = self.health.get();
        if health.answered() && self.flip_state(host, 0) {
            host.log(LogLevel::Info, &format!("meshguard: dedup store etcd ({}) answers again", self.config.cluster));
        }
        self.health.set(health);
    }

    /// Sets the proxy's view of the store (1 down, 0 up); true for the worker that changed it.
    fn flip_state(&self, host: &mut impl Host, to: u8) -> bool {
        let flipped = cas_update(
            host,
            &self.state_key,
            |b| b.first().copied(),
            || 0,
            |v| vec![*v],
            |v| std::mem::replace(v, to) != to,
        );
        flipped.map(|(f, _)| f).unwrap_or(true)
    }

    /// Queues the completion (`done`: the value and the lifetime of its lease) or the release of
    /// the claim `held` on `key`, sent by the next tick from `due` on.
    pub fn settle(&self, key: String, held: Value, done: Option<(Value, u64)>, due: u64, in_flight_ttl: u64) {
        let until = due.saturating_add(in_flight_ttl).saturating_add(etcd::window_size(in_flight_ttl));
        etcd::enqueue(&mut self.writes.borrow_mut(), Write { key, held, done, due, until, attempts: 0 });
    }

    /// Completions and releases waiting for a tick.
    pub fn queued(&self) -> usize {
        self.writes.borrow().len()
    }

    /// The root's tick: grants the leases of this window and the next that no worker has granted
    /// yet, and sends the completions and releases that are due while the store is usable.
    pub fn tick(&self, host: &mut impl Host) {
        let now = host.now();
        // A grant unanswered past its timeout was lost (its VM went away): another worker tries.
        let stale = self.config.timeout.saturating_add(SECOND);
        for &ttl in &self.ttls {
            let window = etcd::window_of(now, ttl);
            for w in [window, window + 1] {
                if self.lease(host, ttl, now.max(w * etcd::window_size(ttl))).is_some() {
                    continue;
                }
                let mine = update_table(host, &self.table_key, |t| t.start_grant(ttl, w, now, stale)).unwrap_or(false);
                if mine {
                    let body = etcd::grant_body(etcd::lease_secs(w, ttl, now));
                    self.send(host, now, etcd::GRANT_PATH, body, Pending::Grant { ttl, window: w });
                }
            }
        }
        if !self.usable(now) {
            return;
        }
        let due: Vec<Write> = {
            let mut writes = self.writes.borrow_mut();
            writes.retain(|w| w.until > now);
            let mut due = Vec::new();
            writes.retain(|w| {
                let send = w.due <= now && due.len() < WRITES_PER_TICK;
                if send {
                    due.push(w.clone());
                }
                !send
            });
            due
        };
        for write in due {
            let mut named = 0;
            let body = match write.done {
                Some((done, ttl)) => {
                    // The `ttl` lease; before it is granted, the in-flight one keeps the key a while.
                    let lease = self
                        .lease(host, ttl, now)
                        .or_else(|| self.ttls.iter().filter(|&&t| t < ttl).find_map(|&t| self.lease(host, t, now)));
                    match lease {
                        Some(lease) => {
                            named = lease;
                            etcd::complete_body(&write.key, &write.held, &done, lease)
                        }
                        None => {
                            etcd::enqueue(&mut self.writes.borrow_mut(), Write { due: now + SECOND, ..write });
                            continue;
                        }
                    }
                }
                None => etcd::release_body(&write.key, &write.held),
            };
            self.send(host, now, etcd::TXN_PATH, body, Pending::Write { write, sent: now, lease: named });
        }
    }

    fn send(&self, host: &mut impl Host, now: u64, path: &'static str, body: Vec<u8>, what: Pending) {
        match host.http_call(&self.call(path, body)) {
            Ok(token) => self.pending.borrow_mut().push((token, what)),
            Err(e) => {
                if !matches!(what, Pending::Grant { .. }) {
                    self.failed(host, now, e.0);
                }
                self.settle_failure(host, now, what);
            }
        }
    }

    /// The answer to a call the tick sent; false when `token` is not one of them.
    pub fn on_answer(&self, host: &mut impl Host, token: u32, status: Option<u32>, body: &[u8]) -> bool {
        let what = {
            let mut pending = self.pending.borrow_mut();
            let Some(i) = pending.iter().position(|(t, _)| *t == token) else {
                return false;
            };
            pending.swap_remove(i).1
        };
        let now = host.now();
        let ok = match &what {
            Pending::Grant { ttl, window } => match etcd::grant_answer(status, body) {
                Ok(id) => {
                    let (ttl, window) = (*ttl, *window);
                    // Every lifetime this store needs has its lease for the current window:
                    // claims and completions can go to etcd.
                    let ready =
                        |t: &LeaseTable| self.ttls.iter().all(|&l| t.lease(l, etcd::window_of(now, l)).is_some());
                    let became_ready = update_table(host, &self.table_key, |t| {
                        let before = ready(t);
                        t.granted(ttl, window, id);
                        !before && ready(t)
                    });
                    if became_ready == Some(true) {
                        // Once per proxy (the worker whose grant completed the set).
                        host.log(
                            LogLevel::Info,
                            &format!("meshguard: dedup store etcd ({}) ready: leases granted", self.config.cluster),
                        );
                    }
                    self.leases.borrow_mut().push(Lease { ttl, window, id, at: now });
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Pending::Write { .. } => etcd::write_answer(status, body).map(|_| ()),
        };
        match (ok, what) {
            (Ok(()), _) => self.answered(host),
            // The completion named a lease etcd no longer has: granted again, sent again.
            (Err(_), Pending::Write { mut write, lease, .. }) if lease != 0 && etcd::lease_gone(status, body) => {
                self.lease_gone(host, lease);
                write.attempts = write.attempts.saturating_add(1);
                write.due = now;
                etcd::enqueue(&mut self.writes.borrow_mut(), write);
            }
            // A write refused at once (a member gone) goes again on the next tick, to another
            // member, before the store counts as failing.
            (Err(_), Pending::Write { mut write, sent, .. })
                if write.attempts + 1 < FAST_ATTEMPTS && now.saturating_sub(sent) < self.config.timeout =>
            {
                write.attempts += 1;
                write.due = now;
                etcd::enqueue(&mut self.writes.borrow_mut(), write);
            }
            // A grant is asked again on the next tick; claims alone judge the store's health
            // (a grant that met a member gone must not stop every claim for a cool-off).
            (Err(_), what @ Pending::Grant { .. }) => self.settle_failure(host, now, what),
            (Err(e), what) => {
                self.failed(host, now, &e);
                self.settle_failure(host, now, what);
            }
        }
        true
    }

    /// A call of the tick failed: a grant is given up (the next tick tries again), a write is
    /// kept for after the cool-off.
    fn settle_failure(&self, host: &mut impl Host, now: u64, what: Pending) {
        match what {
            Pending::Grant { ttl, window } => {
                let _ = update_table(host, &self.table_key, |t| t.abandon(ttl, window));
            }
            Pending::Write { mut write, .. } => {
                write.attempts = write.attempts.saturating_add(1);
                write.due = now.saturating_add(etcd::COOL_OFF);
                etcd::enqueue(&mut self.writes.borrow_mut(), write);
            }
        }
    }
}

fn update_table<R>(host: &mut impl Host, key: &str, change: impl FnMut(&mut LeaseTable) -> R) -> Option<R> {
    cas_update(host, key, LeaseTable::decode, LeaseTable::default, LeaseTable::encode, change).ok().map(|(r, _)| r)
}

/// Seconds a `reject` reply asks the broker to wait: the store's cool-off.
pub fn retry_after_s() -> u64 {
    etcd::COOL_OFF / SECOND
}
