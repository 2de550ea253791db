//! Task events for containerd: each published under the topic its type
//! names (containerd-shim's `Event` trait), never a hand-written one.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::event::Event;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;

/// How long containerd's event service may take to accept an event.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where events go: containerd's event service, or a test's recorder.
#[async_trait]
pub trait EventSink: Send + Sync {
    async fn send(
        &self,
        topic: &str,
        namespace: &str,
        event: Box<dyn MessageDyn>,
    ) -> containerd_shim::Result<()>;
}

#[async_trait]
impl EventSink for RemotePublisher {
    async fn send(
        &self,
        topic: &str,
        namespace: &str,
        event: Box<dyn MessageDyn>,
    ) -> containerd_shim::Result<()> {
        let context = ttrpc::context::with_timeout(PUBLISH_TIMEOUT.as_nanos() as i64);
        self.publish(context, topic, namespace, event).await
    }
}

/// The sandbox's namespace's events.
#[derive(Clone)]
pub struct Events {
    sink: Arc<dyn EventSink>,
    namespace: String,
}

impl Events {
    pub fn new(sink: Arc<dyn EventSink>, namespace: &str) -> Self {
        Events {
            sink,
            namespace: namespace.into(),
        }
    }

    /// Publishes `event` under its topic. A failure is logged, not returned:
    /// what the event reports has happened anyway.
    pub async fn publish(&self, event: impl Event + 'static) {
        let topic = event.topic();
        if let Err(error) = self
            .sink
            .send(&topic, &self.namespace, Box::new(event))
            .await
        {
            tracing::warn!("publishing {topic}: {error}");
        }
    }
}
