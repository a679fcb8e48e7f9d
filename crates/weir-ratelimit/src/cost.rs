//! What a request costs in tokens: estimated at admission, read from the answer's usage.

use http::Request;

/// Estimates a request's tokens at admission, and reads the real count from its answer.
pub trait Cost<B>: Clone + Send + Sync + 'static {
    /// The tokens charged up front.
    fn estimate(&self, request: &Request<B>) -> u32;
}

/// The LLM estimate: the prompt's estimate plus `max_tokens` (or `default_completion` when the
/// request sets none), from the `weir_llm::LlmRequest` extension; without it, the default.
#[derive(Clone, Copy, Debug)]
pub struct LlmCost {
    default_completion: u32,
}

impl LlmCost {
    /// Charges `default_completion` for a request that does not cap its answer.
    pub fn new(default_completion: u32) -> Self {
        Self { default_completion }
    }
}

impl Default for LlmCost {
    /// 1,024 tokens for an uncapped answer; the difference is settled at the end.
    fn default() -> Self {
        Self::new(1024)
    }
}

impl<B> Cost<B> for LlmCost {
    fn estimate(&self, request: &Request<B>) -> u32 {
        match request.extensions().get::<weir_llm::LlmRequest>() {
            Some(llm) => llm
                .prompt_token_estimate()
                .saturating_add(llm.max_tokens().unwrap_or(self.default_completion)),
            None => self.default_completion,
        }
    }
}

/// Reads `"total_tokens":N` from an answer's bytes as they pass (the usage object of a JSON
/// answer or of a stream's last event) without parsing the rest; a usage object split across
/// two frames is missed (the estimate then stands).
pub use weir_llm::scan::UsageScan;

/// The same estimate for every request.
#[derive(Clone, Copy, Debug)]
pub struct Fixed(pub u32);

impl<B> Cost<B> for Fixed {
    fn estimate(&self, _: &Request<B>) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_is_found_in_a_stream_event_or_a_json_answer() {
        let mut scan = UsageScan::default();
        scan.observe(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n");
        assert_eq!(scan.total(), None);
        scan.observe(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21}}\n\ndata: [DONE]\n\n");
        assert_eq!(scan.total(), Some(21));
        let mut json = UsageScan::default();
        json.observe(b"{\"usage\": {\"total_tokens\": 7}}");
        assert_eq!(json.total(), Some(7));
    }
}
