//! A capture store written by an older whtunnel opens with today's
//! migrations and reads right. `tests/fixtures/capture-v1/` and
//! `capture-v3/` were made by `tests/fixtures/make-old-capture-store.sh`
//! with the whtunnel of the schema-1 and schema-3 eras (v3: commit 6535a83,
//! RFC 3339 text timestamps and a foreign key, before migrations 4 and 5), and each
//! `expected/` holds what that whtunnel printed for it: the oracle is the
//! old binary, not today's idea of the format.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn fixture_of(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn fixture() -> PathBuf {
    fixture_of("capture-v1")
}

/// A private copy of the fixture store: opening it migrates it in place.
fn copy_of_fixture() -> tempfile::TempDir {
    copy_of(&fixture())
}

fn copy_of(fixture: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture.join("capture.db"), dir.path().join("capture.db")).unwrap();
    std::fs::create_dir(dir.path().join("bodies")).unwrap();
    for f in std::fs::read_dir(fixture.join("bodies")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join("bodies").join(f.file_name())).unwrap();
    }
    dir
}

fn whtunnel_json(args: &[&str], dir: &Path) -> Value {
    let out = Command::new(common::bin())
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "whtunnel {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn expected(name: &str) -> Value {
    expected_of(&fixture(), name)
}

fn expected_of(fixture: &Path, name: &str) -> Value {
    let text = std::fs::read_to_string(fixture.join("expected").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Every field the old whtunnel printed is printed again, with the same
/// value; fields added since are allowed.
fn assert_contains(actual: &Value, old: &Value, at: &str) {
    match (old, actual) {
        (Value::Object(o), Value::Object(a)) => {
            for (k, v) in o {
                let got = a
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k} is missing: {actual}"));
                assert_contains(got, v, &format!("{at}.{k}"));
            }
        }
        (Value::Array(o), Value::Array(a)) => {
            assert_eq!(o.len(), a.len(), "{at}: {actual}");
            for (i, (o, a)) in o.iter().zip(a).enumerate() {
                assert_contains(a, o, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(actual, old, "{at}"),
    }
}

#[test]
fn an_old_store_lists_and_shows_every_exchange_as_the_old_whtunnel_did() {
    let dir = copy_of_fixture();
    let list = whtunnel_json(&["requests", "list", "--json"], dir.path());
    assert_contains(&list, &expected("list.json"), "list");
    for id in 1..=7 {
        let shown = whtunnel_json(&["requests", "show", &id.to_string(), "--json"], dir.path());
        assert_contains(&shown, &expected(&format!("show-{id}.json")), "show");
    }
    // Opened twice: the migration ran once and the second open reads the same.
    let again = whtunnel_json(&["requests", "list", "--json"], dir.path());
    assert_eq!(again, list);
}

#[test]
fn the_migration_tells_outcomes_apart_that_the_old_schema_kept_as_text() {
    let dir = copy_of_fixture();
    let outcome = |id: i64| {
        whtunnel_json(&["requests", "show", &id.to_string(), "--json"], dir.path())["outcome"]
            .clone()
    };
    let want = [
        (1, "answered"),
        (2, "undelivered"),
        (3, "app-timeout"),
        (4, "answered"),
        (5, "answered"),
        (6, "app-unreachable"),
        (7, "app-unreachable"),
    ];
    for (id, o) in want {
        assert_eq!(outcome(id), Value::from(o), "exchange #{id}");
    }
}

#[test]
fn a_schema_3_store_reads_every_exchange_as_before_after_migrations_5_and_6() {
    // Migration 4 adds columns; migration 5 turns text timestamps into
    // integers and drops the foreign key; migration 6 moves the payloads
    // into the exchange rows: every field the schema-3 whtunnel
    // printed must come back the same, bodies in files included.
    let fixture = fixture_of("capture-v3");
    let dir = copy_of(&fixture);
    let list = whtunnel_json(&["requests", "list", "--json"], dir.path());
    assert_contains(&list, &expected_of(&fixture, "list.json"), "list");
    for id in 1..=8 {
        let shown = whtunnel_json(&["requests", "show", &id.to_string(), "--json"], dir.path());
        let old = expected_of(&fixture, &format!("show-{id}.json"));
        assert_contains(&shown, &old, &format!("show {id}"));
    }
    let again = whtunnel_json(&["requests", "list", "--json"], dir.path());
    assert_eq!(again, list);
    // The migrated file: integer times, no foreign key, nothing dangling.
    let db = rusqlite::Connection::open(dir.path().join("capture.db")).unwrap();
    let text_times: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('exchanges') WHERE name = 'received_at'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(text_times, 0);
    let fks: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM pragma_foreign_key_list('exchanges')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(fks, 0);
    // Migration 6 moved every payload into its exchange's row.
    let tables: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'payloads'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0);
    let payloads: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM exchanges WHERE req_headers IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(payloads, 8);
    // Ids are never reused after the migration: the next one follows.
    let seq: i64 = db
        .query_row("SELECT next_id - 1 FROM partition_state", [], |r| r.get(0))
        .unwrap();
    assert_eq!(seq, 8);
}
