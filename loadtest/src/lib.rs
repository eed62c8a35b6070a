//! What the benchmarks share.

use meridian_tests::api_def;

/// A definition whose encoded `SYNC` message is about 2 KB (the spine
/// benchmark's API).
pub fn definition(i: usize) -> meridian_schemas::proto::ApiDefinition {
    let mut d = api_def(&format!("api-{i:06}"), &format!("Benchmark API {i}"), "v1");
    d.raw = serde_json::json!({"api_id": d.provider_api_id, "description": "x".repeat(1_750)})
        .to_string();
    d
}
