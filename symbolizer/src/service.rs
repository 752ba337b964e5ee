//! A symbolizer on its own thread, so an async runtime never blocks on parsing or lookups.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::{Binary, Error, Lookup, Symbolizer, SymbolizerConfig};

type Reply = mpsc::Sender<Result<Vec<Lookup>, Error>>;
type Request = (Arc<Binary>, Vec<u64>, Reply);

/// Owns a [`Symbolizer`] on a dedicated thread. Requests are served in order; dropping the
/// handle stops the thread after the queued requests.
pub struct SymbolizerThread {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl SymbolizerThread {
    /// Starts the thread with a [`Symbolizer`] made from `config`; fails only if the OS cannot
    /// create a thread.
    pub fn spawn(config: SymbolizerConfig) -> std::io::Result<SymbolizerThread> {
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("symbolizer".into())
            .spawn(move || {
                let mut s = Symbolizer::new(config);
                for (binary, addrs, reply) in rx {
                    // A caller that stopped waiting is not an error.
                    let _ = reply.send(s.symbolize(&binary, &addrs));
                }
            })?;
        Ok(SymbolizerThread {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a request; the receiver yields the result. From async code, wait on it with
    /// `spawn_blocking` or poll `try_recv`.
    pub fn request(
        &self,
        binary: Arc<Binary>,
        addrs: Vec<u64>,
    ) -> mpsc::Receiver<Result<Vec<Lookup>, Error>> {
        let (reply, rx) = mpsc::channel();
        if let Some(tx) = &self.tx {
            // If the thread is gone the reply sender drops here and the receiver sees that.
            let _ = tx.send((binary, addrs, reply));
        }
        rx
    }
}

impl Drop for SymbolizerThread {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
