//! The Lease service: grant, revoke, keep-alive (a stream), time-to-live and the lease list.

use etcd_client::proto::{
    PbLeaseGrantRequest, PbLeaseGrantResponse, PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse,
    PbLeaseLeasesRequest, PbLeaseLeasesResponse, PbLeaseRevokeRequest, PbLeaseRevokeResponse,
    PbLeaseService, PbLeaseStatus, PbLeaseTimeToLiveRequest, PbLeaseTimeToLiveResponse,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{Ctx, header, to_status};
use crate::error::Error;

/// etcd's largest lease TTL (9,000,000,000 seconds).
const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Debug)]
pub(crate) struct LeaseService {
    ctx: Ctx,
}

impl LeaseService {
    pub(crate) fn new(ctx: Ctx) -> Self {
        LeaseService { ctx }
    }
}

#[tonic::async_trait]
impl PbLeaseService for LeaseService {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn lease_grant(
        &self,
        request: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        let r = request.into_inner();
        if r.ttl > MAX_LEASE_TTL {
            return Err(Status::out_of_range("etcdserver: too large lease TTL"));
        }
        let lease = self
            .ctx
            .store
            .backend()
            .lease_grant(r.id, r.ttl)
            .await
            .map_err(to_status)?;
        let revision = self.ctx.current_revision().await?;
        Ok(Response::new(PbLeaseGrantResponse {
            header: header(revision),
            id: lease.id,
            ttl: lease.ttl,
            error: String::new(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn lease_revoke(
        &self,
        request: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        let revision = self
            .ctx
            .store
            .backend()
            .lease_revoke(id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(PbLeaseRevokeResponse {
            header: header(revision),
        }))
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<PbLeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let stopped = ctx.stopped();
            tokio::pin!(stopped);
            loop {
                let req = tokio::select! {
                    _ = &mut stopped => return,
                    req = inbound.next() => req,
                };
                let id = match req {
                    Some(Ok(req)) => req.id,
                    None => return,
                    Some(Err(status)) => {
                        tracing::debug!(%status, "lease keep-alive stream broke");
                        return;
                    }
                };
                let resp = match ctx.store.backend().lease_keep_alive(id).await {
                    Ok(lease) => Ok((lease.id, lease.ttl)),
                    // etcd answers an unknown lease with a TTL of 0, not an error.
                    Err(Error::LeaseNotFound(_)) => Ok((id, 0)),
                    Err(err) => Err(to_status(err)),
                };
                let resp = match resp {
                    Ok((id, ttl)) => match ctx.current_revision().await {
                        Ok(revision) => Ok(PbLeaseKeepAliveResponse {
                            header: header(revision),
                            id,
                            ttl,
                        }),
                        Err(status) => Err(status),
                    },
                    Err(status) => Err(status),
                };
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn lease_time_to_live(
        &self,
        request: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let r = request.into_inner();
        let status = match self
            .ctx
            .store
            .backend()
            .lease_time_to_live(r.id, r.keys)
            .await
        {
            Ok(status) => status,
            // etcd answers an unknown lease with a TTL of -1, not an error.
            Err(Error::LeaseNotFound(_)) => crate::types::LeaseStatus {
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
            Err(err) => return Err(to_status(err)),
        };
        let revision = self.ctx.current_revision().await?;
        Ok(Response::new(PbLeaseTimeToLiveResponse {
            header: header(revision),
            id: status.id,
            ttl: status.ttl,
            granted_ttl: status.granted_ttl,
            keys: status.keys,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn lease_leases(
        &self,
        _request: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        let leases = self.ctx.store.backend().leases().await.map_err(to_status)?;
        let revision = self.ctx.current_revision().await?;
        Ok(Response::new(PbLeaseLeasesResponse {
            header: header(revision),
            leases: leases.into_iter().map(|id| PbLeaseStatus { id }).collect(),
        }))
    }
}
