//! The KV service: Range, Put, DeleteRange, Txn and Compact over the store.

use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbCompare, PbCompareTarget, PbDeleteRequest,
    PbDeleteResponse, PbKeyValue, PbKvService, PbPutRequest, PbPutResponse, PbRangeRequest,
    PbRangeResponse, PbRangeStreamResponse, PbResponseHeader, PbResponseOp, PbTargetUnion,
    PbTxnOpRequest, PbTxnOpResponse, PbTxnRequest, PbTxnRequestOp, PbTxnResponse,
};
use tonic::{Request, Response, Status};

use super::{Ctx, header, key_not_provided, to_status, unimplemented};
use crate::types::{
    Compare, CompareOp, CompareTarget, DeleteRequest, DeleteResponse, KeyValue, PutRequest,
    PutResponse, RangeEnd, RangeRequest, RangeResponse, TxnOp, TxnOpResponse, TxnRequest,
};

/// etcd's limit on the operations of one transaction branch.
const MAX_TXN_OPS: usize = 128;

// Values of the etcd enums (range_request::SortOrder, SortTarget, compare::CompareResult).
const SORT_NONE: i32 = 0;
const SORT_ASCEND: i32 = 1;
const SORT_DESCEND: i32 = 2;
const TARGET_KEY: i32 = 0;
const TARGET_VERSION: i32 = 1;
const TARGET_CREATE: i32 = 2;
const TARGET_MOD: i32 = 3;
const TARGET_VALUE: i32 = 4;

#[derive(Debug)]
pub(crate) struct KvService {
    ctx: Ctx,
}

impl KvService {
    pub(crate) fn new(ctx: Ctx) -> Self {
        KvService { ctx }
    }
}

/// Converts a store key-value to the wire form.
pub(crate) fn kv_to_pb(kv: KeyValue) -> PbKeyValue {
    PbKeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// A validated range: what to ask the store, and what to do with the answer in memory.
#[derive(Debug)]
struct RangePlan {
    req: RangeRequest,
    /// The limit the client asked for (the store is asked for everything when sorting or
    /// filtering in memory).
    limit: i64,
    sort: Option<(i32, i32)>,
    min_mod: i64,
    max_mod: i64,
    min_create: i64,
    max_create: i64,
}

impl RangePlan {
    fn new(r: PbRangeRequest) -> Result<Self, Status> {
        if r.key.is_empty() {
            return Err(key_not_provided());
        }
        if r.limit < 0 {
            return Err(Status::invalid_argument(
                "etcdserver: limit must not be negative",
            ));
        }
        let mut order = r.sort_order;
        if !(SORT_NONE..=SORT_DESCEND).contains(&order) {
            return Err(Status::invalid_argument("etcdserver: unknown sort order"));
        }
        if !(TARGET_KEY..=TARGET_VALUE).contains(&r.sort_target) {
            return Err(Status::invalid_argument("etcdserver: unknown sort target"));
        }
        // The store answers in ascending key order; other orders are sorted here, and a
        // target other than the key with no order means ascending, as in etcd.
        if order == SORT_NONE && r.sort_target != TARGET_KEY {
            order = SORT_ASCEND;
        }
        let sort = match (order, r.sort_target) {
            (SORT_NONE, _) | (SORT_ASCEND, TARGET_KEY) => None,
            (order, target) => Some((order, target)),
        };
        let filtered = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        // Sorting or filtering needs every key of the range before the limit is applied.
        let in_memory = sort.is_some() || filtered;
        Ok(RangePlan {
            req: RangeRequest {
                key: r.key,
                range_end: RangeEnd::from_etcd(&r.range_end),
                revision: r.revision,
                limit: if in_memory { 0 } else { r.limit },
                keys_only: r.keys_only,
                count_only: r.count_only,
            },
            limit: r.limit,
            sort,
            min_mod: r.min_mod_revision,
            max_mod: r.max_mod_revision,
            min_create: r.min_create_revision,
            max_create: r.max_create_revision,
        })
    }

    /// Applies the filters, order and limit the store was not asked for.
    fn finish(&self, mut resp: RangeResponse) -> PbRangeResponse {
        let keep = |kv: &KeyValue| {
            (self.min_mod == 0 || kv.mod_revision >= self.min_mod)
                && (self.max_mod == 0 || kv.mod_revision <= self.max_mod)
                && (self.min_create == 0 || kv.create_revision >= self.min_create)
                && (self.max_create == 0 || kv.create_revision <= self.max_create)
        };
        resp.kvs.retain(keep);
        if let Some((order, target)) = self.sort {
            // Stable sorts keep ties in key order, as etcd does.
            match target {
                TARGET_VERSION => resp.kvs.sort_by_key(|kv| kv.version),
                TARGET_CREATE => resp.kvs.sort_by_key(|kv| kv.create_revision),
                TARGET_MOD => resp.kvs.sort_by_key(|kv| kv.mod_revision),
                TARGET_VALUE => resp.kvs.sort_by(|a, b| a.value.cmp(&b.value)),
                _ => {}
            }
            if order == SORT_DESCEND {
                resp.kvs.reverse();
            }
        }
        if self.limit > 0 && resp.kvs.len() as i64 > self.limit {
            resp.kvs.truncate(self.limit as usize);
            resp.more = true;
        }
        PbRangeResponse {
            header: header(resp.revision),
            kvs: resp.kvs.into_iter().map(kv_to_pb).collect(),
            more: resp.more,
            count: resp.count,
        }
    }
}

fn put_request(p: PbPutRequest) -> Result<PutRequest, Status> {
    if p.key.is_empty() {
        return Err(key_not_provided());
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(Status::invalid_argument("etcdserver: value is provided"));
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(Status::invalid_argument("etcdserver: lease is provided"));
    }
    Ok(PutRequest {
        key: p.key,
        value: p.value,
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    })
}

fn delete_request(d: PbDeleteRequest) -> Result<DeleteRequest, Status> {
    if d.key.is_empty() {
        return Err(key_not_provided());
    }
    Ok(DeleteRequest {
        key: d.key,
        range_end: RangeEnd::from_etcd(&d.range_end),
        prev_kv: d.prev_kv,
    })
}

fn put_response(header: Option<PbResponseHeader>, resp: PutResponse) -> PbPutResponse {
    PbPutResponse {
        header,
        prev_kv: resp.prev_kv.map(kv_to_pb),
    }
}

fn delete_response(header: Option<PbResponseHeader>, resp: DeleteResponse) -> PbDeleteResponse {
    PbDeleteResponse {
        header,
        deleted: resp.deleted,
        prev_kvs: resp.prev_kvs.into_iter().map(kv_to_pb).collect(),
    }
}

fn compare(c: PbCompare) -> Result<Compare, Status> {
    if c.key.is_empty() {
        return Err(key_not_provided());
    }
    if !c.range_end.is_empty() {
        return Err(unimplemented("a transaction compare over a key range"));
    }
    let op = match c.result {
        0 => CompareOp::Equal,
        1 => CompareOp::Greater,
        2 => CompareOp::Less,
        3 => CompareOp::NotEqual,
        other => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: unknown compare result {other}"
            )));
        }
    };
    // The target enum says which field of the union is meant; a missing union is its zero.
    let target = PbCompareTarget::try_from(c.target).map_err(|_| {
        Status::invalid_argument(format!("etcdserver: unknown compare target {}", c.target))
    })?;
    let union = c.target_union;
    let target = match (target, union) {
        (PbCompareTarget::Version, Some(PbTargetUnion::Version(v))) => CompareTarget::Version(v),
        (PbCompareTarget::Version, None) => CompareTarget::Version(0),
        (PbCompareTarget::Create, Some(PbTargetUnion::CreateRevision(v))) => {
            CompareTarget::CreateRevision(v)
        }
        (PbCompareTarget::Create, None) => CompareTarget::CreateRevision(0),
        (PbCompareTarget::Mod, Some(PbTargetUnion::ModRevision(v))) => {
            CompareTarget::ModRevision(v)
        }
        (PbCompareTarget::Mod, None) => CompareTarget::ModRevision(0),
        (PbCompareTarget::Value, Some(PbTargetUnion::Value(v))) => CompareTarget::Value(v),
        (PbCompareTarget::Value, None) => CompareTarget::Value(Vec::new()),
        (PbCompareTarget::Lease, Some(PbTargetUnion::Lease(v))) => CompareTarget::Lease(v),
        (PbCompareTarget::Lease, None) => CompareTarget::Lease(0),
        (target, Some(_)) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: compare target {} does not match its value",
                target.as_str_name()
            )));
        }
    };
    Ok(Compare {
        key: c.key,
        op,
        target,
    })
}

/// One branch of a transaction, with the in-memory parts of its ranges.
type Branch = (Vec<TxnOp>, Vec<Option<RangePlan>>);

fn branch(ops: Vec<PbTxnRequestOp>) -> Result<Branch, Status> {
    let mut out = Vec::with_capacity(ops.len());
    let mut plans = Vec::with_capacity(ops.len());
    for op in ops {
        match op.request {
            Some(PbTxnOpRequest::RequestRange(r)) => {
                let plan = RangePlan::new(r)?;
                out.push(TxnOp::Range(plan.req.clone()));
                plans.push(Some(plan));
            }
            Some(PbTxnOpRequest::RequestPut(p)) => {
                out.push(TxnOp::Put(put_request(p)?));
                plans.push(None);
            }
            Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
                out.push(TxnOp::Delete(delete_request(d)?));
                plans.push(None);
            }
            Some(PbTxnOpRequest::RequestTxn(_)) => {
                return Err(unimplemented("a nested transaction"));
            }
            None => return Err(Status::invalid_argument("etcdserver: empty request in txn")),
        }
    }
    Ok((out, plans))
}

#[tonic::async_trait]
impl PbKvService for KvService {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn range(
        &self,
        request: Request<PbRangeRequest>,
    ) -> Result<Response<PbRangeResponse>, Status> {
        let plan = RangePlan::new(request.into_inner())?;
        let resp = self
            .ctx
            .store
            .backend()
            .range(plan.req.clone())
            .await
            .map_err(to_status)?;
        Ok(Response::new(plan.finish(resp)))
    }

    type RangeStreamStream = futures::stream::Empty<Result<PbRangeStreamResponse, Status>>;

    async fn range_stream(
        &self,
        _request: Request<PbRangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(unimplemented("RangeStream"))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn put(&self, request: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        let put = put_request(request.into_inner())?;
        let resp = self
            .ctx
            .store
            .backend()
            .txn(TxnRequest {
                compare: Vec::new(),
                success: vec![TxnOp::Put(put)],
                failure: Vec::new(),
            })
            .await
            .map_err(to_status)?;
        let revision = resp.revision;
        match resp.responses.into_iter().next() {
            Some(TxnOpResponse::Put(put)) => Ok(Response::new(put_response(header(revision), put))),
            other => Err(Status::internal(format!(
                "etcdserver: put answered with {other:?}"
            ))),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn delete_range(
        &self,
        request: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        let delete = delete_request(request.into_inner())?;
        let resp = self
            .ctx
            .store
            .backend()
            .txn(TxnRequest {
                compare: Vec::new(),
                success: vec![TxnOp::Delete(delete)],
                failure: Vec::new(),
            })
            .await
            .map_err(to_status)?;
        let revision = resp.revision;
        match resp.responses.into_iter().next() {
            Some(TxnOpResponse::Delete(d)) => {
                Ok(Response::new(delete_response(header(revision), d)))
            }
            other => Err(Status::internal(format!(
                "etcdserver: delete answered with {other:?}"
            ))),
        }
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn txn(&self, request: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        let r = request.into_inner();
        if r.compare.len() > MAX_TXN_OPS
            || r.success.len() > MAX_TXN_OPS
            || r.failure.len() > MAX_TXN_OPS
        {
            return Err(Status::invalid_argument(
                "etcdserver: too many operations in txn request",
            ));
        }
        let compares = r
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<Vec<_>, _>>()?;
        let (success, success_plans) = branch(r.success)?;
        let (failure, failure_plans) = branch(r.failure)?;
        let resp = self
            .ctx
            .store
            .backend()
            .txn(TxnRequest {
                compare: compares,
                success,
                failure,
            })
            .await
            .map_err(to_status)?;
        let plans = if resp.succeeded {
            success_plans
        } else {
            failure_plans
        };
        if plans.len() != resp.responses.len() {
            return Err(Status::internal(format!(
                "etcdserver: transaction branch of {} operations answered with {} responses",
                plans.len(),
                resp.responses.len()
            )));
        }
        let revision = resp.revision;
        let responses = resp
            .responses
            .into_iter()
            .zip(plans)
            .map(|(op, plan)| {
                // etcd fills only the revision in the headers of a transaction's responses.
                let nested = Some(PbResponseHeader {
                    revision,
                    ..PbResponseHeader::default()
                });
                let response = match (op, plan) {
                    (TxnOpResponse::Range(range), Some(plan)) => {
                        PbTxnOpResponse::ResponseRange(PbRangeResponse {
                            header: nested,
                            ..plan.finish(range)
                        })
                    }
                    (TxnOpResponse::Range(range), None) => {
                        PbTxnOpResponse::ResponseRange(PbRangeResponse {
                            header: nested,
                            kvs: range.kvs.into_iter().map(kv_to_pb).collect(),
                            more: range.more,
                            count: range.count,
                        })
                    }
                    (TxnOpResponse::Put(put), _) => {
                        PbTxnOpResponse::ResponsePut(put_response(nested, put))
                    }
                    (TxnOpResponse::Delete(d), _) => {
                        PbTxnOpResponse::ResponseDeleteRange(delete_response(nested, d))
                    }
                };
                PbResponseOp {
                    response: Some(response),
                }
            })
            .collect();
        Ok(Response::new(PbTxnResponse {
            header: header(revision),
            succeeded: resp.succeeded,
            responses,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn compact(
        &self,
        request: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        let r = request.into_inner();
        let revision = self
            .ctx
            .store
            .compact(r.revision)
            .await
            .map_err(to_status)?;
        Ok(Response::new(PbCompactionResponse {
            header: header(revision),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, create: i64, modr: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            create_revision: create,
            mod_revision: modr,
            version: 1,
            ..KeyValue::default()
        }
    }

    #[test]
    fn range_sorts_filters_and_limits_in_memory() {
        let plan = RangePlan::new(PbRangeRequest {
            key: b"a".to_vec(),
            range_end: vec![0],
            limit: 2,
            sort_order: SORT_DESCEND,
            sort_target: TARGET_MOD,
            min_create_revision: 2,
            ..PbRangeRequest::default()
        })
        .expect("valid range");
        assert_eq!(plan.req.limit, 0, "sorting asks the store for everything");
        let resp = RangeResponse {
            revision: 9,
            kvs: vec![kv("a", 1, 8), kv("b", 2, 3), kv("c", 4, 7), kv("d", 5, 5)],
            more: false,
            count: 4,
        };
        let out = plan.finish(resp);
        let keys: Vec<_> = out.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, vec![b"c".to_vec(), b"d".to_vec()]);
        assert!(out.more);
        assert_eq!(out.count, 4);
        assert_eq!(out.header.map(|h| h.revision), Some(9));
    }

    #[test]
    fn range_without_key_is_refused_like_etcd() {
        let err = RangePlan::new(PbRangeRequest::default()).expect_err("empty key");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(err.message(), "etcdserver: key is not provided");
    }

    #[test]
    fn compare_with_range_end_is_unimplemented() {
        let c = PbCompare {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            ..PbCompare::default()
        };
        assert_eq!(
            compare(c).expect_err("range compare").code(),
            tonic::Code::Unimplemented
        );
    }
}
