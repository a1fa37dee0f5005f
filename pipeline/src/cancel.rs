//! Cancelling an item's work: each item a stage processes gets a [`Cancel`] token, which the
//! executor trips when the item times out (`job.item_timeout`). Work that
//! [`StageContext::cpu`](crate::stage::StageContext::cpu) runs sees the token of its item as the
//! thread's *current* token ([`current`], [`check`]): frame loops and model calls check it and
//! return early, and FFmpeg's interrupt callback reads it, so a timed-out item stops using its
//! core instead of running on (or hanging on a read) after its error record is written.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A cancellation flag shared by the executor and one item's work; clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Ask the item's work to stop (it stops at its next check).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Run `f` with this token as the thread's current one (the previous one is restored after,
    /// also when `f` panics).
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Cancel>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| *c.borrow_mut() = self.0.take());
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(self.clone())));
        f()
    }
}

thread_local! {
    /// The token of the item whose work runs on this thread, if any.
    static CURRENT: RefCell<Option<Cancel>> = const { RefCell::new(None) };
}

/// The token of the item whose work runs on this thread, if any: for work that the item hands
/// to threads of its own, which run it in [`Cancel::scope`].
pub fn current() -> Option<Cancel> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Whether the item whose work runs on this thread was cancelled (false outside any item).
pub fn cancelled() -> bool {
    CURRENT.with(|c| c.borrow().as_ref().is_some_and(Cancel::is_cancelled))
}

/// `Err(Cancelled)` once the item whose work runs on this thread was cancelled: for frame loops
/// and model calls to return early with `?`.
pub fn check() -> Result<(), Cancelled> {
    if cancelled() {
        Err(Cancelled)
    } else {
        Ok(())
    }
}

/// The item's work stopped early because the item was cancelled (it timed out). The executor has
/// recorded the item's error already, so this error only ends the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled: the item timed out (job.item_timeout)")]
pub struct Cancelled;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_token_is_the_scoped_one_and_is_restored() {
        let (outer, inner) = (Cancel::default(), Cancel::default());
        assert_eq!(check(), Ok(()), "outside any item nothing is cancelled");
        outer.scope(|| {
            inner.cancel();
            assert!(!cancelled());
            assert_eq!(inner.scope(check), Err(Cancelled));
            assert!(!cancelled(), "the outer token is current again");
            assert!(current().is_some_and(|c| !c.is_cancelled()));
            outer.cancel();
            assert_eq!(check(), Err(Cancelled));
        });
        assert!(!cancelled());
        let panicked = std::panic::catch_unwind(|| inner.scope(|| panic!("boom")));
        assert!(panicked.is_err());
        assert!(!cancelled(), "restored after a panic too");
    }
}
