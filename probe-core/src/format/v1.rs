//! Records as format version 1 laid them out, read into today's
//! [`Record`]. Version 2 added two fields at the end of the arrival record
//! (the prompt's hash and the trace's own top-K); every other record is
//! byte-for-byte the same, so only the arrival differs here.

use super::event::{
    AdapterErrors, DropCounts, EmitBatch, ProcessInfo, Record, ReqKey, RequestArrival,
    RequestFinish, SamplingParams, SegmentHeader, SegmentsRemoved, Step,
};
use serde::Deserialize;

/// A version-1 payload. The variants keep [`Record`]'s order: bincode
/// writes the variant's index.
#[derive(Deserialize)]
pub(crate) enum RecordV1 {
    Header(SegmentHeader),
    Process(ProcessInfo),
    Arrival(ArrivalV1),
    Step(Step),
    Finish(RequestFinish),
    Emit(EmitBatch),
    Drops(DropCounts),
    SegmentsRemoved(SegmentsRemoved),
    AdapterErrors(AdapterErrors),
}

/// [`RequestArrival`] without the fields version 2 added.
#[derive(Deserialize)]
pub(crate) struct ArrivalV1 {
    req: ReqKey,
    arrival_ns: u64,
    internal_id: String,
    external_id: Option<String>,
    trace_id: Option<[u8; 16]>,
    parent_span_id: Option<[u8; 8]>,
    prompt_tokens: u32,
    params: SamplingParams,
}

impl From<RecordV1> for Record {
    fn from(r: RecordV1) -> Record {
        match r {
            RecordV1::Header(h) => Record::Header(h),
            RecordV1::Process(p) => Record::Process(p),
            RecordV1::Arrival(a) => Record::Arrival(RequestArrival {
                req: a.req,
                arrival_ns: a.arrival_ns,
                internal_id: a.internal_id,
                external_id: a.external_id,
                trace_id: a.trace_id,
                parent_span_id: a.parent_span_id,
                prompt_tokens: a.prompt_tokens,
                params: a.params,
                prompt_hash: None,
                trace_top_k: None,
            }),
            RecordV1::Step(s) => Record::Step(s),
            RecordV1::Finish(f) => Record::Finish(f),
            RecordV1::Emit(e) => Record::Emit(e),
            RecordV1::Drops(d) => Record::Drops(d),
            RecordV1::SegmentsRemoved(s) => Record::SegmentsRemoved(s),
            RecordV1::AdapterErrors(a) => Record::AdapterErrors(a),
        }
    }
}
