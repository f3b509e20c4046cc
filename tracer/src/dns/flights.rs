//! Requests in flight, shared: an identical request made while one is under way waits for
//! its outcome instead of asking again (DNS queries to the agent, route queries).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

/// The requests under way, by key.
#[derive(Debug)]
pub struct Flights<K, V> {
    table: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Self {
            table: Mutex::default(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Flights<K, V> {
    /// Whether a request for `key` is under way.
    pub fn flying(&self, key: &K) -> bool {
        self.table.lock().is_ok_and(|t| t.contains_key(key))
    }

    /// The outcome of the request for `key`: the one under way, or `start()` made now. If
    /// the caller that started it gives up, one still waiting makes its own.
    pub async fn join<F, Fut>(&self, key: K, start: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let joined = self
            .table
            .lock()
            .ok()
            .map(|mut table| Arc::clone(table.entry(key.clone()).or_default()));
        let Some(flight) = joined else {
            // A poisoned table: never shared then, but still made.
            return start().await;
        };
        // The seat holds the only clone of this caller's: its leave() counts on it.
        let mut seat = Seat {
            table: &self.table,
            key,
            flight: Some(flight),
        };
        let outcome = match &seat.flight {
            Some(flight) => flight.get_or_init(start).await.clone(),
            None => start().await,
        };
        seat.leave();
        outcome
    }

    /// Requests under way.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.table.lock().map_or(0, |t| t.len())
    }
}

/// A caller's place in a request under way. The request leaves the table once it is done,
/// or when the last caller waiting for it is gone (all gave up before the outcome).
struct Seat<'a, K: Hash + Eq, V> {
    table: &'a Mutex<HashMap<K, Arc<OnceCell<V>>>>,
    key: K,
    flight: Option<Arc<OnceCell<V>>>,
}

impl<K: Hash + Eq, V> Seat<'_, K, V> {
    fn leave(&mut self) {
        let Some(flight) = self.flight.take() else {
            return;
        };
        let Ok(mut table) = self.table.lock() else {
            return;
        };
        let ours = table
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &flight));
        let done = flight.initialized();
        // Dropped under the lock, where every seat is taken: the count below is exact.
        drop(flight);
        let alone = table
            .get(&self.key)
            .is_some_and(|f| Arc::strong_count(f) == 1);
        if ours && (done || alone) {
            table.remove(&self.key);
        }
    }
}

impl<K: Hash + Eq, V> Drop for Seat<'_, K, V> {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn callers_at_once_share_one_request_and_the_table_empties() {
        let flights: Flights<&str, u32> = Flights::default();
        let made = AtomicUsize::new(0);
        let start = || async {
            made.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            7
        };
        let (a, b, c) = tokio::join!(
            flights.join("x", start),
            flights.join("x", start),
            flights.join("x", start)
        );
        assert_eq!((a, b, c), (7, 7, 7));
        assert_eq!(made.load(Ordering::SeqCst), 1);
        assert_eq!(flights.count(), 0);
        assert_eq!(flights.join("x", start).await, 7);
        assert_eq!(
            made.load(Ordering::SeqCst),
            2,
            "done: the next one asks again"
        );
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_leaves_the_request_to_the_others_or_to_nobody() {
        let flights: Arc<Flights<&str, u32>> = Arc::default();
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            1
        };
        // Alone and gone: nothing is left behind.
        let f = Arc::clone(&flights);
        let alone = tokio::spawn(async move { f.join("k", slow).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(flights.flying(&"k"));
        alone.abort();
        let _ = alone.await;
        assert_eq!(flights.count(), 0);

        // The first gives up: the one still waiting makes its own request.
        let f = Arc::clone(&flights);
        let first = tokio::spawn(async move { f.join("k", slow).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let f = Arc::clone(&flights);
        let second = tokio::spawn(async move { f.join("k", || async { 2 }).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.abort();
        assert_eq!(second.await.unwrap(), 2);
        assert_eq!(flights.count(), 0);
    }
}
