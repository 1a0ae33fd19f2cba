//! Adapters from our plain async tasks to Pingora background services, so the tasks themselves
//! (revocation listener, reload, health checks) need no Pingora types.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{BackgroundService, GenBackgroundService, background_service};

type TaskFn = dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

/// A long-running task that stops when the server shuts down.
pub struct Task {
    run: Box<TaskFn>,
}

#[async_trait]
impl BackgroundService for Task {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = (self.run)() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Wraps `make` (called once, at start) as a named Pingora background service.
pub fn task<F, Fut>(name: &str, make: F) -> GenBackgroundService<Task>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    background_service(
        name,
        Task {
            run: Box::new(move || Box::pin(make())),
        },
    )
}
