//! An OTLP/gRPC trace collector inside the runner that only counts what it receives.
use super::BoxError;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

/// Locks `m`, carrying on after a panic elsewhere (the counts stay meaningful).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the collector received.
/// What the collector received.
#[derive(Clone, Default)]
pub struct Received {
    pub requests: u64,
    pub spans: u64,
    pub by_name: BTreeMap<String, u64>,
}

#[derive(Clone, Default)]
struct Counter(Arc<Mutex<Received>>);

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = lock(&self.0);
        got.requests += 1;
        let spans = req
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans);
        for span in spans {
            got.spans += 1;
            *got.by_name.entry(span.name).or_default() += 1;
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The collector, served on the runner's runtime until `finish`. Decoding the export
/// requests costs this process CPU (the `gen` column) while a traced server runs.
pub struct Collector {
    pub addr: SocketAddr,
    counter: Counter,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Collector {
    pub async fn start() -> Result<Collector, BoxError> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counter = Counter::default();
        let (stop, rx) = oneshot::channel::<()>();
        let server = Server::builder()
            .add_service(TraceServiceServer::new(counter.clone()))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = rx.await;
            });
        let handle = tokio::spawn(server);
        Ok(Collector {
            addr,
            counter,
            stop,
            handle,
        })
    }

    /// Stops the collector: what it received.
    pub async fn finish(self) -> Result<Received, BoxError> {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(10), self.handle).await {
            Ok(joined) => joined??,
            Err(_) => return Err("the OTLP collector did not stop within 10 s".into()),
        }
        Ok(lock(&self.counter.0).clone())
    }
}
