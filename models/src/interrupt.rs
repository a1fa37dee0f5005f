//! Stopping a long forward pass between its blocks. A caller that may give up on a forward (an
//! item that timed out) installs a stop check for its thread with [`scope`]; the block loops of
//! the big models (the DiTs' blocks, the VAEs' encoder and decoder blocks and chunks, the text
//! and image encoders' layers) call [`check`] between blocks and return [`Interrupted`] once it
//! says stop, so the thread is free again within one block's time instead of one forward's.
//! Without a scope [`check`] never stops. The check is a plain closure: this crate knows nothing
//! of the pipeline's cancellation tokens.

use std::cell::RefCell;
use std::rc::Rc;

thread_local! {
    /// The stop check of the forward passes running on this thread, if any.
    static STOP: RefCell<Option<Rc<dyn Fn() -> bool>>> = const { RefCell::new(None) };
}

/// A forward pass that stopped because its caller's check said so.
#[derive(Debug, thiserror::Error)]
#[error("{0} stopped between blocks: the work was cancelled")]
pub struct Interrupted(pub &'static str);

/// Run `f` with `stop` as this thread's stop check (the previous one is restored after, also
/// when `f` panics).
pub fn scope<R>(stop: impl Fn() -> bool + 'static, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Rc<dyn Fn() -> bool>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            STOP.with(|s| *s.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(STOP.with(|s| s.borrow_mut().replace(Rc::new(stop))));
    f()
}

/// `Err(Interrupted(part))` once this thread's stop check says stop: for block loops to end
/// early with `?`. `part` names the loop in the error.
pub fn check(part: &'static str) -> candle_core::Result<()> {
    let stop = STOP.with(|s| s.borrow().clone());
    match stop {
        Some(stop) if stop() => Err(candle_core::Error::wrap(Interrupted(part))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn checks_stop_only_inside_a_scope_that_says_so_and_scopes_nest() {
        assert!(check("x").is_ok(), "no scope: never stops");
        let calls = Rc::new(Cell::new(0));
        let c = calls.clone();
        let err = scope(
            move || {
                c.set(c.get() + 1);
                c.get() == 2
            },
            || {
                check("first")?;
                scope(|| false, || check("inner"))?;
                check("second")
            },
        )
        .unwrap_err();
        assert_eq!(calls.get(), 2, "the inner scope's check replaced the outer one");
        assert!(err.to_string().contains("second stopped between blocks"), "{err}");
        assert!(check("x").is_ok(), "the scope is over");
    }
}
