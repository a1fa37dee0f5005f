//! Model calls of many items gathered into one: a GPU scores 256 small images in about the time
//! it scores 4, so a stage whose items each bring a little work (the aesthetic scorer's sampled
//! frames) hands its inputs to a [`Batcher`], which runs them together on the placement's model
//! thread. It never waits on a timer: while the thread is busy, inputs queue; when it is free, it
//! takes everything queued (up to a limit) as one batch. With the thread idle, a lone input runs
//! at once, so nothing is slower than one call per item.

use std::sync::{Arc, Mutex};

use pipeline::{StageContext, StageError};
use tokio::sync::oneshot;

use crate::checkpoints::ModelThread;

/// What one item gets back: its output and how many items its batch held, or the batch's error.
type Reply<O> = oneshot::Sender<Result<(O, usize), String>>;

/// The inputs waiting for the model thread, and whether a job to take them is on its way there.
struct Queue<I, O> {
    waiting: Vec<(I, Reply<O>)>,
    scheduled: bool,
}

/// A batch function: the outputs of `inputs`, in order, one per input.
type BatchFn<I, O> = dyn Fn(Vec<I>) -> Result<Vec<O>, String> + Send + Sync;

/// Gathers the inputs of concurrent items into batches run on one [`ModelThread`].
pub struct Batcher<I, O> {
    thread: ModelThread,
    max: usize,
    queue: Arc<Mutex<Queue<I, O>>>,
    run: Arc<BatchFn<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Batcher { thread: self.thread.clone(), max: self.max, queue: self.queue.clone(), run: self.run.clone() }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// A batcher running `run` on `thread` over at most `max` inputs at a time (at least one).
    pub fn new(
        thread: ModelThread,
        max: usize,
        run: impl Fn(Vec<I>) -> Result<Vec<O>, String> + Send + Sync + 'static,
    ) -> Batcher<I, O> {
        let queue = Arc::new(Mutex::new(Queue { waiting: Vec::new(), scheduled: false }));
        Batcher { thread, max: max.max(1), queue, run: Arc::new(run) }
    }

    /// The output for `input`, computed in one call with whatever other inputs are queued when
    /// the model thread takes it, and how many inputs that call held. An item that times out
    /// meanwhile is left out of the batch that would have run it.
    pub async fn run(&self, ctx: &StageContext, input: I) -> Result<(O, usize), StageError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut queue = self.queue.lock().map_err(|_| StageError::msg("batch queue poisoned"))?;
            queue.waiting.push((input, tx));
            if !queue.scheduled {
                queue.scheduled = true;
                self.schedule();
            }
        }
        match rx.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(StageError::msg(e)),
            Err(_) if ctx.cancel.is_cancelled() => Err(pipeline::cancel::Cancelled.into()),
            Err(_) => Err(StageError::msg("the model thread stopped")),
        }
    }

    /// Sends the model thread a job that takes the queued inputs as one batch.
    fn schedule(&self) {
        let me = self.clone();
        self.thread.send(Box::new(move || me.take_and_run()));
    }

    /// On the model thread: take up to `max` queued inputs (those of items still waiting), run
    /// them, reply to each; leave a job for the rest.
    fn take_and_run(&self) {
        let batch: Vec<(I, Reply<O>)> = {
            let Ok(mut queue) = self.queue.lock() else { return };
            let n = queue.waiting.len().min(self.max);
            let batch = queue.waiting.drain(..n).filter(|(_, reply)| !reply.is_closed()).collect();
            if queue.waiting.is_empty() {
                queue.scheduled = false;
            } else {
                self.schedule();
            }
            batch
        };
        if batch.is_empty() {
            return;
        }
        let (inputs, replies): (Vec<I>, Vec<Reply<O>>) = batch.into_iter().unzip();
        let n = inputs.len();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.run)(inputs)))
            .unwrap_or_else(|panic| Err(pipeline::panic_error(panic.as_ref())))
            .and_then(|outputs| {
                if outputs.len() == n {
                    Ok(outputs)
                } else {
                    Err(format!("internal error: a batch of {n} inputs gave {} outputs", outputs.len()))
                }
            });
        // A receiver is gone only when its item timed out after the batch was taken.
        match result {
            Ok(outputs) => replies.into_iter().zip(outputs).for_each(|(reply, out)| drop(reply.send(Ok((out, n))))),
            Err(e) => replies.into_iter().for_each(|reply| drop(reply.send(Err(e.clone())))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use crate::checkpoints::testing::context as ctx;

    /// Items 0..n submitted while `thread` is held busy, then the thread let go: their tasks.
    async fn queued_behind_a_busy_thread(
        batcher: &Batcher<u32, u32>,
        thread: &ModelThread,
        n: u32,
    ) -> Vec<tokio::task::JoinHandle<Result<(u32, usize), StageError>>> {
        let (hold, release) = std::sync::mpsc::channel::<()>();
        thread.send(Box::new(move || {
            let _ = release.recv();
        }));
        let ctx = ctx();
        let tasks = (0..n)
            .map(|i| {
                let (b, ctx) = (batcher.clone(), ctx.clone());
                tokio::spawn(async move { b.run(&ctx, i).await })
            })
            .collect();
        while batcher.queue.lock().unwrap().waiting.len() < n as usize {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        hold.send(()).unwrap();
        tasks
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn inputs_queued_while_the_thread_is_busy_run_as_one_batch() {
        let thread = ModelThread::spawn("batch-test").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let batcher = Batcher::new(thread.clone(), 64, move |xs: Vec<u32>| {
            seen.fetch_add(1, Ordering::SeqCst);
            Ok(xs.into_iter().map(|x| x * 10).collect())
        });
        for (i, t) in queued_behind_a_busy_thread(&batcher, &thread, 20).await.into_iter().enumerate() {
            let (out, n) = t.await.unwrap().unwrap();
            assert_eq!(out, i as u32 * 10, "each input gets its own output back");
            assert_eq!(n, 20);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "20 queued inputs, one call");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn batches_hold_at_most_max_inputs_and_a_lone_input_runs_at_once() {
        let thread = ModelThread::spawn("batch-test").unwrap();
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Batcher::new(thread.clone(), 8, move |xs: Vec<u32>| {
            seen.lock().unwrap().push(xs.len());
            Ok(xs)
        });
        let ctx = ctx();
        assert_eq!(batcher.run(&ctx, 7).await.unwrap(), (7, 1), "an idle thread runs a lone input");
        for t in queued_behind_a_busy_thread(&batcher, &thread, 20).await {
            t.await.unwrap().unwrap();
        }
        assert_eq!(*sizes.lock().unwrap(), [1, 8, 8, 4]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failed_or_panicking_batch_is_every_item_s_error_and_the_thread_goes_on() {
        let thread = ModelThread::spawn("batch-test").unwrap();
        let batcher = Batcher::new(thread, 8, |xs: Vec<u32>| match xs[0] {
            0 => Err("out of memory".to_string()),
            1 => panic!("boom"),
            2 => Ok(Vec::new()),
            _ => Ok(xs),
        });
        let ctx = ctx();
        let e = batcher.run(&ctx, 0).await.unwrap_err().to_string();
        assert!(e.contains("out of memory"), "{e}");
        let e = batcher.run(&ctx, 1).await.unwrap_err().to_string();
        assert!(e.contains("panic") && e.contains("boom"), "{e}");
        let e = batcher.run(&ctx, 2).await.unwrap_err().to_string();
        assert!(e.contains("1 inputs gave 0 outputs"), "{e}");
        assert_eq!(batcher.run(&ctx, 3).await.unwrap(), (3, 1));
    }
}
