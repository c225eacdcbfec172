//! A future that wakes itself while it is polled is polled again at once,
//! instead of being handed back to the runtime.
//!
//! The cloud link queues each answer on rumqttc's request channel, whose
//! receiver is the link's own event loop: the send wakes the link's task
//! while that task runs. tokio takes a wake during a task's own poll for a
//! yield: the task goes to the back of the run queue, and a parked worker
//! thread is woken to help (a futex wake; on a VM, an interrupt to an idle
//! CPU). That came on every action's answer, on its way to the socket (P7).
//! [`OwnWakes`] takes such wakes itself and polls again before it returns,
//! so the answer is written in the same turn. A wake that comes after the
//! poll reaches the runtime as before.

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// At most this many polls in a row on the future's own wakes; then it
/// yields to the runtime like any task, so that one that keeps waking
/// itself cannot hold its thread.
const MAX_POLLS: usize = 16;

/// `future`, polled again at once when it wakes itself during a poll.
pub fn repoll_own_wakes<F: Future>(future: F) -> OwnWakes<F> {
    let state = Arc::new(OwnWaker::default());
    OwnWakes {
        future: Box::pin(future),
        own: Waker::from(state.clone()),
        waker: state,
    }
}

/// See [`repoll_own_wakes`].
pub struct OwnWakes<F> {
    future: Pin<Box<F>>,
    waker: Arc<OwnWaker>,
    /// `waker` as the future's waker: made once, not on every poll.
    own: Waker,
}

#[derive(Default)]
struct OwnWaker {
    /// The future is being polled: a wake now is taken here.
    polling: AtomicBool,
    /// A wake came during the poll.
    woken: AtomicBool,
    /// The runtime's waker of the task, for wakes outside a poll.
    task: AtomicWaker,
}

impl Wake for OwnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.polling.load(Ordering::SeqCst) {
            self.woken.store(true, Ordering::SeqCst);
            // The poll may have ended between the two loads, without
            // seeing this wake: then the task must have it.
            if self.polling.load(Ordering::SeqCst) {
                return;
            }
        }
        self.task.wake();
    }
}

impl<F: Future> Future for OwnWakes<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.waker.task.register(cx.waker());
        let mut own = Context::from_waker(&this.own);
        for _ in 0..MAX_POLLS {
            this.waker.polling.store(true, Ordering::SeqCst);
            this.waker.woken.store(false, Ordering::SeqCst);
            let polled = this.future.as_mut().poll(&mut own);
            this.waker.polling.store(false, Ordering::SeqCst);
            if polled.is_ready() {
                return polled;
            }
            if !this.waker.woken.swap(false, Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the wakes that reach the task.
    #[derive(Default)]
    struct TaskWakes(AtomicUsize);

    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn task() -> (Arc<TaskWakes>, Waker) {
        let wakes = Arc::new(TaskWakes::default());
        (wakes.clone(), Waker::from(wakes))
    }

    /// Wakes itself on each of its first `times` polls, then is ready.
    struct WakesItself {
        times: usize,
        polls: usize,
    }

    impl Future for WakesItself {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            if self.polls > self.times {
                return Poll::Ready(self.polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// One turn of a future that wakes itself on its first `times` polls:
    /// what the turn gave, how often the future was polled, and how often
    /// the task was woken.
    fn one_turn(times: usize) -> (Poll<usize>, usize, usize) {
        let (wakes, waker) = task();
        let mut future = std::pin::pin!(repoll_own_wakes(WakesItself { times, polls: 0 }));
        let polled = future.as_mut().poll(&mut Context::from_waker(&waker));
        (polled, future.future.polls, wakes.0.load(Ordering::SeqCst))
    }

    #[test]
    fn a_future_that_wakes_itself_is_polled_again_in_the_same_turn() {
        let (polled, _, woken) = one_turn(3);
        assert_eq!(polled, Poll::Ready(4), "four polls in one turn");
        assert_eq!(woken, 0, "the task was never woken");
    }

    #[test]
    fn one_that_keeps_waking_itself_yields_to_the_runtime() {
        let (polled, polls, woken) = one_turn(usize::MAX);
        assert!(polled.is_pending());
        assert_eq!(polls, MAX_POLLS);
        assert_eq!(woken, 1, "it asked to be polled again");
    }

    #[test]
    fn a_wake_after_the_poll_reaches_the_task() {
        let (wakes, waker) = task();
        let (send, receive) = tokio::sync::oneshot::channel::<u8>();
        let mut future = std::pin::pin!(repoll_own_wakes(receive));
        assert!(
            future
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        std::thread::spawn(move || send.send(7))
            .join()
            .expect("sender")
            .expect("sent");
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "woken from the other thread"
        );
        assert_eq!(
            future.as_mut().poll(&mut Context::from_waker(&waker)),
            Poll::Ready(Ok(7))
        );
    }
}
