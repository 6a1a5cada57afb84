//! The Cluster service: one member, this endpoint; membership cannot change.

use etcd_client::proto::{
    PbClusterService, PbMember, PbMemberAddRequest, PbMemberAddResponse, PbMemberListRequest,
    PbMemberListResponse, PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest,
    PbMemberRemoveResponse, PbMemberUpdateRequest, PbMemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::{Ctx, MEMBER_ID, header, unimplemented};

/// The member's name in `etcdctl member list`.
const MEMBER_NAME: &str = "rk3s";

#[derive(Debug)]
pub(crate) struct ClusterService {
    ctx: Ctx,
}

impl ClusterService {
    pub(crate) fn new(ctx: Ctx) -> Self {
        ClusterService { ctx }
    }
}

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_add(
        &self,
        _request: Request<PbMemberAddRequest>,
    ) -> Result<Response<PbMemberAddResponse>, Status> {
        Err(unimplemented(
            "MemberAdd (the endpoint is a one-member cluster)",
        ))
    }

    async fn member_remove(
        &self,
        _request: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        Err(unimplemented(
            "MemberRemove (the endpoint is a one-member cluster)",
        ))
    }

    async fn member_update(
        &self,
        _request: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        Err(unimplemented(
            "MemberUpdate (the endpoint is a one-member cluster)",
        ))
    }

    async fn member_list(
        &self,
        _request: Request<PbMemberListRequest>,
    ) -> Result<Response<PbMemberListResponse>, Status> {
        // etcd answers from its membership, not its key space: no revision.
        Ok(Response::new(PbMemberListResponse {
            header: header(0),
            members: vec![PbMember {
                id: MEMBER_ID,
                name: MEMBER_NAME.to_string(),
                peer_ur_ls: Vec::new(),
                client_ur_ls: vec![format!("http://{}", self.ctx.addr)],
                is_learner: false,
            }],
        }))
    }

    async fn member_promote(
        &self,
        _request: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        Err(unimplemented(
            "MemberPromote (the endpoint is a one-member cluster)",
        ))
    }
}
