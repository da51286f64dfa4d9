//! A minimal hand-written unary gRPC service (`/test.Echo/Echo`, string in, string out) for the
//! auth and TLS tests, optionally guarded by a zone-token authenticator the way the KDS server
//! guards its streams: the claimed zone travels as metadata `zone`.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use kds::auth::TokenAuthenticator;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server, ServerTlsConfig};

#[derive(Clone)]
pub struct Echo {
    auth: Option<Arc<TokenAuthenticator>>,
}

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

struct EchoCall {
    auth: Option<Arc<TokenAuthenticator>>,
}

impl tonic::server::UnaryService<String> for EchoCall {
    type Response = String;
    type Future = BoxFuture<tonic::Response<String>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<String>) -> Self::Future {
        let auth = self.auth.clone();
        Box::pin(async move {
            if let Some(auth) = auth {
                let zone = request
                    .metadata()
                    .get("zone")
                    .and_then(|z| z.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let claims = auth.verify_metadata(request.metadata(), &zone).await?;
                return Ok(tonic::Response::new(format!(
                    "hello {} {}",
                    claims.zone,
                    request.into_inner()
                )));
            }
            Ok(tonic::Response::new(format!(
                "echo {}",
                request.into_inner()
            )))
        })
    }
}

impl Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let auth = self.auth.clone();
        Box::pin(async move {
            if request.uri().path() != "/test.Echo/Echo" {
                return Ok(tonic::Status::unimplemented("no such method").into_http());
            }
            let mut grpc =
                tonic::server::Grpc::new(tonic_prost::ProstCodec::<String, String>::default());
            Ok(grpc.unary(EchoCall { auth }, request).await)
        })
    }
}

/// Serves [`Echo`] on 127.0.0.1 (port 0), with TLS when given; returns the address and a
/// shutdown trigger.
pub async fn serve_echo(
    tls: Option<ServerTlsConfig>,
    auth: Option<Arc<TokenAuthenticator>>,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).unwrap();
    }
    let router = builder.add_service(Echo { auth });
    tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (addr, tx)
}

/// Calls `/test.Echo/Echo`, optionally with `authorization` and `zone` metadata.
pub async fn call_echo(
    channel: Channel,
    message: &str,
    auth: Option<(&str, &str)>,
) -> Result<String, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut request = tonic::Request::new(message.to_string());
    if let Some((authorization, zone)) = auth {
        request
            .metadata_mut()
            .insert("authorization", authorization.parse().unwrap());
        request.metadata_mut().insert("zone", zone.parse().unwrap());
    }
    let response = grpc
        .unary(
            request,
            http::uri::PathAndQuery::from_static("/test.Echo/Echo"),
            tonic_prost::ProstCodec::<String, String>::default(),
        )
        .await?;
    Ok(response.into_inner())
}
