//! The filter language over stored summaries (`requests list --filter`)
//! agrees with the inspector's `/` over rows of the same exchanges.

use super::fixtures::*;
use crate::inspect::state::{matches, matches_summary, Row};

/// Ids of `mixed()` that `filter` matches, through the summary function.
fn summary_ids(filter: &str) -> Vec<i64> {
    mixed()
        .iter()
        .filter(|s| matches_summary(filter, s))
        .map(|s| s.id)
        .collect()
}

#[test]
fn summary_terms_match_like_the_inspector() {
    assert_eq!(summary_ids("5xx"), [4]);
    assert_eq!(summary_ids("404"), [2]);
    assert_eq!(summary_ids("err"), [5]);
    assert_eq!(summary_ids("#3"), [3]);
    assert_eq!(summary_ids("invoice"), [1, 6]);
    assert_eq!(summary_ids("post stripe 2xx"), [1, 6]);
    assert_eq!(summary_ids("STRIPE"), [1, 4, 6]);
    assert_eq!(summary_ids("in time"), [5]);
    // The `body:` term is the caller's: it passes here.
    assert_eq!(summary_ids("body:anything 301"), [3]);
    assert!(summary_ids("sig:valid").is_empty());
    for f in [
        "5xx",
        "err",
        "#3",
        "invoice",
        "post stripe",
        "body:x",
        "zzz",
        "",
    ] {
        let rows: Vec<i64> = mixed()
            .into_iter()
            .map(Row::stored)
            .filter(|r| matches(f, r))
            .map(|r| r.summary.id)
            .collect();
        assert_eq!(rows, summary_ids(f), "filter {f:?}");
    }
}
