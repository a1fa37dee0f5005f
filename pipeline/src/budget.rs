//! The payload memory budget: items hold a reservation for the bytes of tensors they carry.
//!
//! A stage that produces a large payload waits until enough of the budget is free, so decoded
//! video cannot pile up in memory when a later stage is slower.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Reservations are counted in units of this many bytes (semaphores count in u32).
const UNIT: u64 = 64 * 1024;

/// A shared budget of payload bytes in flight.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    total_units: u32,
}

/// Part of the budget held by one item; released when the item is dropped or written.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
    units: u32,
}

impl MemoryBudget {
    /// A budget of `bytes` (at least one unit).
    pub fn new(bytes: u64) -> Self {
        let total_units = (bytes / UNIT).clamp(1, u32::MAX as u64 / 2) as u32;
        MemoryBudget { semaphore: Arc::new(Semaphore::new(total_units as usize)), total_units }
    }

    /// Bytes not currently reserved.
    pub fn available_bytes(&self) -> u64 {
        self.semaphore.available_permits() as u64 * UNIT
    }

    /// Make `item`'s reservation match its payload, waiting for budget if it grew.
    ///
    /// A single item larger than the whole budget reserves the whole budget, so it still
    /// proceeds (alone) instead of waiting forever.
    pub async fn reserve(&self, item: &mut crate::Item) {
        let bytes = item.payload_bytes() as u64;
        let units = (bytes.div_ceil(UNIT)).min(self.total_units as u64) as u32;
        let held = item.reservation.as_ref().map_or(0, |r| r.units);
        if units == held {
            return;
        }
        // Release first, then take the new amount: holding both could deadlock two growing items.
        item.reservation = None;
        if units == 0 {
            return;
        }
        // The semaphore is never closed, so acquiring can only wait, not fail.
        let permit = self.semaphore.clone().acquire_many_owned(units).await.expect("budget semaphore is never closed");
        item.reservation = Some(Reservation { _permit: permit, units });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Item, Tensor};

    #[tokio::test]
    async fn reservations_follow_payload_and_release_on_drop() {
        let budget = MemoryBudget::new(1 << 20);
        let mut item = Item::new("a");
        item.tensors
            .insert("x".into(), Tensor::new(DType::U8, vec![256 * 1024], vec![0u8; 256 * 1024].into()).unwrap());
        budget.reserve(&mut item).await;
        assert_eq!(budget.available_bytes(), 768 * 1024);
        item.tensors.clear();
        budget.reserve(&mut item).await;
        assert_eq!(budget.available_bytes(), 1 << 20);
        item.tensors.insert("y".into(), Tensor::new(DType::U8, vec![4 << 20], vec![0u8; 4 << 20].into()).unwrap());
        budget.reserve(&mut item).await;
        assert_eq!(budget.available_bytes(), 0, "an oversized item takes the whole budget");
        drop(item);
        assert_eq!(budget.available_bytes(), 1 << 20);
    }
}
