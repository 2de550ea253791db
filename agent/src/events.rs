//! Events for the shim (process exits, OOM kills), queued until it asks.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use cocoon_protocol::api::agent::Event;
use tokio::sync::Notify;

/// Events kept while nobody collects them; the oldest go first.
const CAPACITY: usize = 1024;

#[derive(Clone, Default)]
pub struct Events {
    queue: Arc<Mutex<VecDeque<Event>>>,
    arrived: Arc<Notify>,
}

impl Events {
    pub fn publish(&self, event: Event) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.len() == CAPACITY {
            queue.pop_front();
        }
        queue.push_back(event);
        drop(queue);
        self.arrived.notify_one();
    }

    /// The next event, waiting for one if there is none.
    pub async fn next(&self) -> Event {
        loop {
            let waiting = self.arrived.notified();
            if let Some(event) = self
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
            {
                return event;
            }
            waiting.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_come_out_in_order_and_the_queue_is_bounded() {
        let events = Events::default();
        for n in 0..(CAPACITY + 2) {
            let mut event = Event::new();
            event.container_id = n.to_string();
            events.publish(event);
        }
        assert_eq!(events.next().await.container_id, "2");
        assert_eq!(events.next().await.container_id, "3");
    }
}
