//! The relay-wide memory budget for request bodies being read in order to
//! be held. Drawn on as body bytes arrive, never reserved up front for a
//! declared length (an idle connection announcing 25 MiB takes nothing),
//! and one IP (one /64 for IPv6) may use only a share of it, so a few
//! senders cannot make holding fail for every tenant.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a body could not be given more of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The whole budget is in use.
    Busy,
    /// This IP holds its full share already.
    IpShare,
}

/// The budget, in KiB.
pub(crate) struct HoldBudget {
    pool: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, u64>>,
    ip_share_kib: u64,
}

impl HoldBudget {
    /// A budget of `total_kib`, of which one IP may use `ip_share_kib`.
    pub(crate) fn new(total_kib: usize, ip_share_kib: u64) -> Arc<Self> {
        Arc::new(HoldBudget {
            pool: Arc::new(Semaphore::new(total_kib)),
            per_ip: Mutex::new(HashMap::new()),
            ip_share_kib,
        })
    }

    /// An empty draw for one body from `ip`.
    pub(crate) fn draw(self: &Arc<Self>, ip: IpAddr) -> Draw {
        Draw {
            budget: self.clone(),
            ip: super::limits::miss_key(ip),
            permit: None,
            kib: 0,
        }
    }
}

/// One body's share of the budget; given back when dropped.
pub(crate) struct Draw {
    budget: Arc<HoldBudget>,
    ip: IpAddr,
    permit: Option<OwnedSemaphorePermit>,
    kib: u64,
}

impl Draw {
    /// Makes the draw cover `bytes` in all.
    pub(crate) fn cover(&mut self, bytes: u64) -> Result<(), Refused> {
        let want = bytes.div_ceil(1024);
        if want <= self.kib {
            return Ok(());
        }
        let more = want - self.kib;
        let mut per_ip = self.budget.per_ip.lock();
        let used = per_ip.get(&self.ip).copied().unwrap_or(0);
        if used + more > self.budget.ip_share_kib {
            return Err(Refused::IpShare);
        }
        let n = u32::try_from(more).map_err(|_| Refused::Busy)?;
        let permit = self
            .budget
            .pool
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Refused::Busy)?;
        match &mut self.permit {
            Some(p) => p.merge(permit),
            None => self.permit = Some(permit),
        }
        per_ip.insert(self.ip, used + more);
        self.kib = want;
        Ok(())
    }
}

impl Drop for Draw {
    fn drop(&mut self) {
        if self.kib == 0 {
            return;
        }
        let mut per_ip = self.budget.per_ip.lock();
        if let Some(used) = per_ip.get_mut(&self.ip) {
            *used = used.saturating_sub(self.kib);
            if *used == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_grow_with_the_body_and_one_ip_gets_only_its_share() {
        let budget = HoldBudget::new(100, 60);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut first = budget.draw(a);
        first.cover(0).unwrap();
        first.cover(50 * 1024).unwrap();
        let mut second = budget.draw(a);
        assert_eq!(second.cover(11 * 1024), Err(Refused::IpShare));
        second.cover(10 * 1024).unwrap();
        let mut other = budget.draw(b);
        assert_eq!(other.cover(41 * 1024), Err(Refused::Busy));
        other.cover(40 * 1024).unwrap();
        drop(first);
        second.cover(60 * 1024).unwrap();
        drop((second, other));
        assert_eq!(budget.pool.available_permits(), 100);
        assert!(budget.per_ip.lock().is_empty());
    }
}
