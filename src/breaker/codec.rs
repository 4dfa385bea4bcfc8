//! The shared-data encoding of a [`State`]: little-endian, versioned, sized by the window. A value
//! that does not decode for the current configuration (another format version, another window
//! size) is treated as absent, so the circuit starts closed instead of misreading old state.

use super::{Bucket, Calls, Phase, State};
use crate::config::{Breaker, Window};

const VERSION: u8 = 1;
const KIND_COUNT: u8 = 0;
const KIND_TIME: u8 = 1;

impl State {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.window_bytes());
        out.push(VERSION);
        out.push(self.phase as u8);
        out.extend_from_slice(&self.generation.to_le_bytes());
        out.extend_from_slice(&self.open_until.to_le_bytes());
        out.extend_from_slice(&self.open_duration.to_le_bytes());
        out.extend_from_slice(&self.probes_issued.to_le_bytes());
        out.extend_from_slice(&self.probes_succeeded.to_le_bytes());
        out.extend_from_slice(&self.probe_deadline.to_le_bytes());
        out.extend_from_slice(&self.consecutive_failures.to_le_bytes());
        match &self.window {
            Calls::Count { ring, head, len } => {
                out.push(KIND_COUNT);
                out.extend_from_slice(&(ring.len() as u32).to_le_bytes());
                out.extend_from_slice(&head.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(ring);
            }
            Calls::Time { buckets } => {
                out.push(KIND_TIME);
                out.extend_from_slice(&(buckets.len() as u32).to_le_bytes());
                for b in buckets {
                    out.extend_from_slice(&b.second.to_le_bytes());
                    out.extend_from_slice(&b.calls.to_le_bytes());
                    out.extend_from_slice(&b.failures.to_le_bytes());
                    out.extend_from_slice(&b.slow.to_le_bytes());
                }
            }
        }
        out
    }

    fn window_bytes(&self) -> usize {
        match &self.window {
            Calls::Count { ring, .. } => 12 + ring.len(),
            Calls::Time { buckets } => 4 + buckets.len() * 20,
        }
    }

    /// The state in `bytes` if it is a state of this configuration's window; `None` otherwise.
    pub fn decode(bytes: &[u8], cfg: &Breaker) -> Option<State> {
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let phase = match r.u8()? {
            0 => Phase::Closed,
            1 => Phase::HalfOpen,
            2 => Phase::Open,
            _ => return None,
        };
        let generation = r.u32()?;
        let open_until = r.u64()?;
        let open_duration = r.u64()?;
        let probes_issued = r.u32()?;
        let probes_succeeded = r.u32()?;
        let probe_deadline = r.u64()?;
        let consecutive_failures = r.u32()?;
        let kind = r.u8()?;
        let size = r.u32()?;
        let window = match (kind, cfg.window) {
            (KIND_COUNT, Window::Count(n)) if n == size => {
                let head = r.u32()?;
                let len = r.u32()?;
                let ring = r.take(size as usize)?.to_vec();
                if head >= size || len > size || ring.iter().any(|b| *b > 3) {
                    return None;
                }
                Calls::Count { ring, head, len }
            }
            (KIND_TIME, Window::Time(n)) if n == size => {
                let mut buckets = Vec::with_capacity(size as usize);
                for _ in 0..size {
                    buckets.push(Bucket { second: r.u64()?, calls: r.u32()?, failures: r.u32()?, slow: r.u32()? });
                }
                Calls::Time { buckets }
            }
            _ => return None,
        };
        if !r.0.is_empty() {
            return None;
        }
        Some(State {
            phase,
            generation,
            open_until,
            open_duration,
            probes_issued,
            probes_succeeded,
            probe_deadline,
            consecutive_failures,
            window,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}
