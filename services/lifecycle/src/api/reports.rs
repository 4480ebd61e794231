//! The funnel report.

use cascade_chassis::RequestContext;
use cascade_chassis::validate::Validator;
use cascade_domain::AccountStage;
use cascade_proto::lifecycle::v1 as pb;
use tonic::{Request, Response, Status};

use super::LifecycleApi;

pub(super) async fn get_funnel_report(
    api: &LifecycleApi,
    request: Request<pb::GetFunnelReportRequest>,
) -> Result<Response<pb::GetFunnelReportResponse>, Status> {
    let context = RequestContext::of(&request)?;
    let request = request.into_inner();
    let mut v = Validator::new();
    let (start, end) = v.window(request.start_time.as_ref(), request.end_time.as_ref());
    v.finish()?;
    let rows = api.repository.funnel(&context.tenant, start, end).await?;
    let rate = |part: i64, whole: i64| {
        if whole > 0 {
            part as f64 / whole as f64
        } else {
            0.0
        }
    };
    let qualified_to_pipeline_rate = rows
        .iter()
        .find(|r| r.stage == AccountStage::Qualified)
        .map_or(0.0, |r| rate(r.to_pipeline, r.entered));
    let stages = rows
        .into_iter()
        .map(|r| pb::FunnelStage {
            stage: r.stage.to_proto(),
            entered: r.entered,
            accounts_entered: r.accounts,
            moved_forward: r.moved_forward,
            moved_back: r.moved_back,
            stayed: r.stayed,
            accounts_now: r.now.0,
            at_risk_now: r.now.1,
            conversion_rate: rate(r.moved_forward, r.entered),
            median_time_in_stage: r.median_ms.map(|ms| prost_types::Duration {
                seconds: ms.div_euclid(1000),
                nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
            }),
        })
        .collect();
    Ok(Response::new(pb::GetFunnelReportResponse {
        stages,
        qualified_to_pipeline_rate,
    }))
}
