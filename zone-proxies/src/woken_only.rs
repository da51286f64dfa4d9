//! [`WokenOnly`]: a future that a busy task polls only when the future itself woke it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

/// A future polled only after it woke itself (its first poll included), however often the
/// task running it is woken for other reasons: the connection task is woken several times per
/// request by its sockets, and polling the drain `watch` each time (a mutex lock in tokio's
/// `Notify`) is wasted work. Its own wake-ups set a flag and wake the task.
pub struct WokenOnly<F> {
    inner: Pin<Box<F>>,
    wake: Arc<WakeFlag>,
}

struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl std::task::Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> WokenOnly<F> {
    pub fn new(inner: F) -> WokenOnly<F> {
        WokenOnly {
            inner: Box::pin(inner),
            wake: Arc::new(WakeFlag {
                woken: AtomicBool::new(true),
                task: AtomicWaker::new(),
            }),
        }
    }
}

impl<F: Future> Future for WokenOnly<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        // Registered before the flag is read, so a wake-up in between is not lost.
        this.wake.task.register(cx.waker());
        if !this.wake.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = std::task::Waker::from(this.wake.clone());
        this.inner.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::sync::Mutex;

    use super::*;

    /// An inner future that counts its polls and keeps the waker it was given.
    struct Probe {
        polls: Arc<AtomicU32>,
        waker: Arc<Mutex<Option<std::task::Waker>>>,
        ready: Arc<AtomicBool>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.ready.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn woken_only_polls_its_future_after_its_own_wake_ups() {
        let (polls, inner_waker, ready) = Default::default();
        let probe = Probe {
            polls: Arc::clone(&polls),
            waker: Arc::clone(&inner_waker),
            ready: Arc::clone(&ready),
        };
        let mut future = WokenOnly::new(probe);
        let task_woken = Arc::new(WakeFlag {
            woken: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        let task_waker = std::task::Waker::from(task_woken.clone());
        let mut cx = Context::from_waker(&task_waker);
        let mut poll = || Pin::new(&mut future).poll(&mut cx);
        assert!(poll().is_pending());
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "the first poll reaches the future"
        );
        // The task woken for other reasons: the future is not polled again.
        for _ in 0..5 {
            assert!(poll().is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // The future's own wake-up wakes the task and lets the next poll through.
        ready.store(true, Ordering::Relaxed);
        inner_waker.lock().unwrap().take().unwrap().wake();
        assert!(
            task_woken.woken.load(Ordering::Relaxed),
            "the task was woken"
        );
        assert!(poll().is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }
}
