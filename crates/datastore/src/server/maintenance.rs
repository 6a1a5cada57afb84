//! The Maintenance service: `Status` (what `etcdctl endpoint status` shows) and an empty alarm
//! list; the rest of etcd's maintenance API has no meaning here and is refused.

use etcd_client::proto::{
    PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse, PbDowngradeRequest,
    PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest, PbHashResponse,
    PbMaintenanceService, PbMoveLeaderRequest, PbMoveLeaderResponse, PbSnapshotRequest,
    PbSnapshotResponse, PbStatusRequest, PbStatusResponse,
};
use tonic::{Request, Response, Status};

use super::{Ctx, ETCD_VERSION, MEMBER_ID, RAFT_TERM, header, to_status, unimplemented};

/// alarm_request::AlarmAction::Get.
const ALARM_GET: i32 = 0;

#[derive(Debug)]
pub(crate) struct MaintenanceService {
    ctx: Ctx,
}

impl MaintenanceService {
    pub(crate) fn new(ctx: Ctx) -> Self {
        MaintenanceService { ctx }
    }
}

#[tonic::async_trait]
impl PbMaintenanceService for MaintenanceService {
    async fn alarm(
        &self,
        request: Request<PbAlarmRequest>,
    ) -> Result<Response<PbAlarmResponse>, Status> {
        if request.into_inner().action != ALARM_GET {
            return Err(unimplemented("activating or deactivating alarms"));
        }
        // The store raises no alarms (no space quota, no corruption check).
        let revision = self.ctx.current_revision().await?;
        Ok(Response::new(PbAlarmResponse {
            header: header(revision),
            alarms: Vec::new(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn status(
        &self,
        _request: Request<PbStatusRequest>,
    ) -> Result<Response<PbStatusResponse>, Status> {
        let status = self.ctx.store.status().await.map_err(to_status)?;
        // There is no raft log: the revision stands in for its index.
        let index = u64::try_from(status.revision).unwrap_or_default();
        Ok(Response::new(PbStatusResponse {
            header: header(status.revision),
            version: ETCD_VERSION.to_string(),
            db_size: status.db_size,
            leader: MEMBER_ID,
            raft_index: index,
            raft_term: RAFT_TERM,
            raft_applied_index: index,
            errors: Vec::new(),
            db_size_in_use: status.db_size,
            is_learner: false,
            ..PbStatusResponse::default()
        }))
    }

    async fn defragment(
        &self,
        _request: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        Err(unimplemented(
            "Defragment (the SQL backends reclaim space themselves)",
        ))
    }

    async fn hash(
        &self,
        _request: Request<PbHashRequest>,
    ) -> Result<Response<PbHashResponse>, Status> {
        Err(unimplemented("Hash"))
    }

    async fn hash_kv(
        &self,
        _request: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        Err(unimplemented("HashKV"))
    }

    type SnapshotStream = futures::stream::Empty<Result<PbSnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        _request: Request<PbSnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unimplemented(
            "Snapshot (back up the datastore's database instead)",
        ))
    }

    async fn move_leader(
        &self,
        _request: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        Err(unimplemented("MoveLeader (there is one member)"))
    }

    async fn downgrade(
        &self,
        _request: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        Err(unimplemented("Downgrade"))
    }
}
