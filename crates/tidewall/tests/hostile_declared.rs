#![cfg(all(feature = "toml", feature = "http", feature = "tokio"))]
#![allow(clippy::print_stderr, clippy::type_complexity)]
//! Black-box attack on the "declared names only" contract of `tidewall::config`:
//! `RegistryBuilder::strict`, `Problem::Undeclared`, `Problem::Removed`, `Reload::removed`,
//! and `Registry::pipeline` / `Registry::http_client` refusing undeclared names.
//!
//! Every test quotes the doc sentence it checks. Written from the public docs only.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tidewall::breaker::Window;
use tidewall::config::{Config, Invalid, Problem, Registry, Reload};
use tidewall::rt::Tokio;
use tidewall::testing::Clocked;
use tidewall::{Error, Rejected};
use tidewall_core::rng::SplitMix64;

type Clk = Clocked<Tokio>;

fn cfg(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("{e}\n--- in ---\n{text}"))
}

fn registry(text: &str, strict: bool) -> Registry<Clk> {
    Registry::builder(cfg(text))
        .runtime(Clocked::new(Tokio))
        .strict(strict)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn problem<T>(result: Result<T, Invalid>) -> Problem {
    match result {
        Ok(_) => panic!("expected a refusal, got Ok"),
        Err(e) => e.problem().clone(),
    }
}

fn err<T>(result: Result<T, Invalid>) -> Invalid {
    match result {
        Ok(_) => panic!("expected a refusal, got Ok"),
        Err(e) => e,
    }
}

fn names<T>(list: Vec<(tidewall::Name, T)>) -> Vec<String> {
    let mut v: Vec<String> = list.into_iter().map(|(n, _)| n.to_string()).collect();
    v.sort();
    v
}

fn declared<R>(registry: &Registry<R>) -> Vec<String>
where
    R: tidewall::rt::Clock,
{
    registry
        .config()
        .instances
        .keys()
        .map(|k| k.to_string())
        .collect()
}

fn removed_sorted(reload: &Reload) -> Vec<String> {
    let mut v: Vec<String> = reload.removed.iter().map(|n| n.to_string()).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------------------------
// Undeclared lookups
// ---------------------------------------------------------------------------------------------

/// Docs (`Registry::pipeline`): "A name the file does not declare is refused (it would get a
/// pipeline of no stage)"; (`Registry::http_client`): "A name the file does not declare is
/// refused"; (`Registry`): "a registry makes no pipeline or HTTP client for one". A lenient
/// registry still makes plain policies for any name, and holding one does not make the name
/// declared. A name that is only a `[configs.<name>]` base is not an instance.
#[test]
fn lenient_stacks_refuse_undeclared_names_but_plain_policies_do_not() {
    let r = registry(
        r#"
        [defaults.breaker]
        consecutive_failures = 3
        [configs.shared.breaker]
        consecutive_failures = 4
        [instances.pay.breaker]
        [instances.out]
        http = {}
        [instances.out.breaker]
        consecutive_failures = 5
        "#,
        false,
    );
    assert!(r.pipeline("pay").is_ok());
    assert!(r.http_client("out").is_ok());

    for ghost in [
        "nope",
        "PAY",
        "pay ",
        " pay",
        "shared",
        "defaults",
        "instances.pay",
        "configs",
    ] {
        let e = err(r.pipeline(ghost));
        assert_eq!(e.problem(), &Problem::Undeclared, "pipeline({ghost:?})");
        let e = err(r.http_client(ghost));
        assert_eq!(e.problem(), &Problem::Undeclared, "http_client({ghost:?})");
    }
    assert_eq!(err(r.pipeline("nope")).path(), "instances.nope");
    assert_eq!(err(r.http_client("nope")).path(), "instances.nope");

    // Lenient: a plain policy of any name is get-or-create...
    assert!(r.breaker("nope").is_ok());
    assert!(r.breaker("shared").is_ok());
    // ...and that does not declare it.
    assert_eq!(problem(r.pipeline("nope")), Problem::Undeclared);
    assert_eq!(problem(r.http_client("shared")), Problem::Undeclared);

    assert_eq!(names(r.pipelines()), ["pay"]);
    assert_eq!(names(r.http_clients()), ["out"]);
}

/// Docs (`Problem::Removed`): "Keep the instance declared (with no section, for a stack of
/// none)". An instance declared with no section at all is declared: it gets a pipeline (and
/// a client), where an undeclared name does not.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_declared_instance_of_no_section_gets_a_stack_of_none() {
    let r = Registry::new(cfg(
        "[instances.bare]\n[instances.timed]\ndeadline = \"1s\"\n",
    ))
    .unwrap();
    let bare = r.pipeline("bare").expect("declared with no section");
    assert_eq!(bare.call(|| async { Ok::<_, &str>(7) }).await, Ok(7));
    assert!(r.pipeline("timed").is_ok());
    assert!(
        r.http_client("bare").is_ok(),
        "declared: a client of no stage"
    );
    assert_eq!(problem(r.pipeline("bar")), Problem::Undeclared);
    assert_eq!(names(r.pipelines()), ["bare", "timed"]);
}

/// Names with dots, quotes, unicode and the empty string are instance names like any other:
/// a lookup matches the declared text exactly (no trimming, case folding, unicode
/// normalisation or key-path splitting). Docs (strict example):
/// `(typo.path(), typo.problem()) == ("instances.paymnets", &Problem::Undeclared)`.
#[test]
fn odd_names_are_matched_exactly() {
    let text = r#"
        [instances."api.v2".breaker]
        [instances.'say "hi"'.breaker]
        [instances."ünï/çødé 🚀".breaker]
        [instances."café".breaker]
        [instances."tab	in".breaker]
        "#;
    let declared_names = [
        "api.v2",
        "say \"hi\"",
        "ünï/çødé 🚀",
        "caf\u{e9}",
        "tab\tin",
    ];
    let misses = [
        "api",
        "v2",
        "api.v2.",
        "\"api.v2\"",
        "instances.\"api.v2\"",
        "api.v2\0",
        "say hi",
        "say \\\"hi\\\"",
        "ünï/çødé",
        "cafe\u{301}", // the same text, decomposed
        "CAFÉ",
        "tab in",
        "",
    ];
    for strict in [false, true] {
        let r = registry(text, strict);
        for name in declared_names {
            let p = r.pipeline(name).unwrap_or_else(|e| panic!("{name:?}: {e}"));
            assert_eq!(p.name(), name);
            assert_eq!(r.breaker(name).unwrap().name(), name);
        }
        for name in misses {
            assert_eq!(
                problem(r.pipeline(name)),
                Problem::Undeclared,
                "pipeline({name:?})"
            );
            assert_eq!(
                problem(r.http_client(name)),
                Problem::Undeclared,
                "client({name:?})"
            );
            if strict {
                assert_eq!(
                    problem(r.breaker(name)),
                    Problem::Undeclared,
                    "breaker({name:?})"
                );
            }
        }
        // The error names the name asked for, not a prefix of it.
        let e = err(r.pipeline("api"));
        assert_eq!(e.path(), "instances.api");
        let dotted = err(r.pipeline("a.b"));
        assert!(dotted.path().contains("a.b"), "{dotted}");
        assert_ne!(
            dotted.path(),
            "instances.a.b",
            "a dotted name must not read back as a nested key path"
        );
        assert_eq!(names(r.pipelines()), {
            let mut v: Vec<String> = declared_names.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        });
    }
}

/// The empty string: undeclared unless declared (`[instances.""]` is valid TOML).
#[test]
fn the_empty_name() {
    let r = registry("[instances.x.breaker]\n", true);
    assert_eq!(problem(r.breaker("")), Problem::Undeclared);
    assert_eq!(problem(r.pipeline("")), Problem::Undeclared);
    assert_eq!(problem(r.keyed_breaker::<String>("")), Problem::Undeclared);
    let lenient = registry("[instances.x.breaker]\n", false);
    assert_eq!(problem(lenient.pipeline("")), Problem::Undeclared);
    assert_eq!(problem(lenient.http_client("")), Problem::Undeclared);

    match Config::from_toml("[instances.\"\".breaker]\nconsecutive_failures = 2\n") {
        Ok(config) => {
            let r = Registry::builder(config)
                .runtime(Clocked::new(Tokio))
                .strict(true)
                .build()
                .unwrap();
            assert!(
                r.pipeline("").is_ok(),
                "declared: the empty name gets its pipeline"
            );
            assert!(r.breaker("").is_ok());
            assert_eq!(problem(r.breaker(" ")), Problem::Undeclared);
            // Removing it is a removal like any other.
            assert_eq!(
                problem(r.reload(cfg("[instances.x.breaker]\n"))),
                Problem::Removed
            );
        }
        // A configuration may refuse the empty name outright; it must then say so at a path.
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// Docs (`RegistryBuilder::strict`): "every lookup of a name the file does not declare is
/// refused with [`Problem::Undeclared`]" — the keyed tables and fault injectors included —
/// while a declared instance's kind it has no section for is still made from the defaults.
#[test]
fn strict_refuses_every_kind_of_lookup_of_an_undeclared_name() {
    let r = registry(
        r#"
        [defaults.bulkhead]
        max_concurrent = 4
        [defaults.rate_limit]
        count = 10
        period = "1s"
        [defaults.adaptive]
        algorithm = "aimd"
        min_limit = 1
        initial_limit = 4
        [configs.base.breaker]
        consecutive_failures = 2
        [instances.a.breaker]
        [instances.k.breaker]
        [instances.k.keys]
        max_keys = 10
        [instances.c.chaos]
        seed = 1
        "#,
        true,
    );
    let held = |r: &Registry<Clk>| {
        (
            names(r.breakers()),
            names(r.bulkheads()),
            names(r.rate_limiters()),
            names(r.retry_budgets()),
            names(r.adaptive_limiters()),
            names(r.chaos_handles()),
            r.keyed_tables().len(),
        )
    };
    let before = held(&r);
    for ghost in ["ghost", "base", "A", ""] {
        let checks: Vec<(&str, Result<(), Invalid>)> = vec![
            ("breaker", r.breaker(ghost).map(drop)),
            ("bulkhead", r.bulkhead(ghost).map(drop)),
            ("rate_limiter", r.rate_limiter(ghost).map(drop)),
            ("retry_budget", r.retry_budget(ghost).map(drop)),
            ("adaptive_limiter", r.adaptive_limiter(ghost).map(drop)),
            ("chaos", r.chaos(ghost).map(drop)),
            ("pipeline", r.pipeline(ghost).map(drop)),
            ("http_client", r.http_client(ghost).map(drop)),
            ("keyed_breaker", r.keyed_breaker::<String>(ghost).map(drop)),
            (
                "keyed_bulkhead",
                r.keyed_bulkhead::<String>(ghost).map(drop),
            ),
            (
                "keyed_rate_limiter",
                r.keyed_rate_limiter::<String>(ghost).map(drop),
            ),
            (
                "keyed_adaptive_limiter",
                r.keyed_adaptive_limiter::<String>(ghost).map(drop),
            ),
        ];
        for (what, result) in checks {
            let e = result.expect_err(what);
            assert_eq!(e.problem(), &Problem::Undeclared, "{what}({ghost:?}): {e}");
            if ghost == "ghost" {
                assert_eq!(e.path(), "instances.ghost", "{what}");
            }
        }
    }
    let after = held(&r);
    assert_eq!(before, after, "a refused lookup holds nothing");

    // Declared names are served, kinds without a section included (from the defaults).
    assert!(r.breaker("a").is_ok());
    assert_eq!(r.bulkhead("a").unwrap().capacity(), 4);
    assert!(r.retry_budget("a").is_ok());
    assert!(r.rate_limiter("a").is_ok());
    assert!(r.keyed_breaker::<String>("k").is_ok());
    assert!(r.chaos("c").is_ok());
    assert!(r.pipeline("k").is_ok());
}

/// Docs (`Registry`): a keyed instance's tables are "made on first use", lenient or strict,
/// and (lenient) any name gets a table from the layers there are; it is never "removed" by a
/// reload, since it was never declared (`Reload::removed`: "Instances the configuration
/// before declared").
#[test]
fn lenient_keyed_tables_of_undeclared_names_are_never_removed() {
    let r = registry(
        "[defaults.breaker]\nconsecutive_failures = 2\n[instances.a.breaker]\n",
        false,
    );
    assert!(r.keyed_breaker::<String>("ghost").is_ok());
    assert!(r.breaker("ghost2").is_ok());
    let reload = r
        .reload(cfg(
            "[defaults.breaker]\nconsecutive_failures = 3\n[instances.a.breaker]\n",
        ))
        .unwrap();
    assert!(reload.removed.is_empty(), "{reload:?}");
    let reload = r
        .reload(cfg("[defaults.breaker]\nconsecutive_failures = 3\n"))
        .unwrap();
    assert_eq!(
        removed_sorted(&reload),
        ["a"],
        "only the instance declared before"
    );
}

// ---------------------------------------------------------------------------------------------
// Removals
// ---------------------------------------------------------------------------------------------

/// Docs (`Registry::reload`): "A reload that removes the instance of a pipeline or HTTP client
/// the registry holds ... is refused with [`Problem::Removed`]"; "# Errors ... Nothing changes
/// then"; and the new configuration's "every policy's new settings are worked out before any
/// is applied". Then a valid reload applies whole.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_refused_removal_changes_nothing_then_a_valid_reload_applies() {
    let old = r#"
        [defaults.bulkhead]
        max_concurrent = 100
        [instances.a.bulkhead]
        max_concurrent = 1
        max_queue = 0
        [instances.b.bulkhead]
        max_concurrent = 2
        max_queue = 0
        [instances.b.breaker]
        window_calls = 10
        "#;
    let r = Registry::new(cfg(old)).unwrap();
    let a = r.pipeline("a").unwrap();
    let b_bulkhead = r.bulkhead("b").unwrap();
    let b_breaker = r.breaker("b").unwrap();
    let config_before = r.config();

    let removing = r#"
        [defaults.bulkhead]
        max_concurrent = 100
        [instances.b.bulkhead]
        max_concurrent = 5
        max_queue = 0
        [instances.b.breaker]
        window_calls = 20
        [instances.c.breaker]
        "#;
    let refused = err(r.reload(cfg(removing)));
    assert_eq!(refused.problem(), &Problem::Removed, "{refused}");
    assert_eq!(
        refused.path(),
        "instances.a",
        "the removed instance is the path: {refused}"
    );

    assert_eq!(b_bulkhead.capacity(), 2, "nothing half-applied");
    assert_eq!(b_breaker.policy().window(), Window::Count { calls: 10 });
    assert_eq!(
        names(r.breakers()),
        ["b"],
        "c not built by a refused reload"
    );
    assert!(
        Arc::ptr_eq(&config_before, &r.config()),
        "the old configuration stays in force"
    );
    assert_eq!(
        problem(r.pipeline("c")),
        Problem::Undeclared,
        "c is not declared yet"
    );

    // The pipeline keeps its stage: a's bulkhead admits one call, and it is taken.
    let held = r.bulkhead("a").unwrap().try_acquire_owned().unwrap();
    assert_eq!(
        a.call(|| async { Ok::<_, &str>(()) }).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );

    // The instance kept declared, with no section: applied.
    let keeping = removing.replace(
        "[instances.c.breaker]",
        "[instances.a]\n[instances.c.breaker]",
    );
    let reload = r.reload(cfg(&keeping)).unwrap();
    assert!(reload.removed.is_empty(), "{reload:?}");
    assert_eq!(reload.pipelines, 1, "{reload:?}");
    assert_eq!(b_bulkhead.capacity(), 5);
    assert_eq!(b_breaker.policy().window(), Window::Count { calls: 20 });
    assert_eq!(names(r.breakers()), ["b", "c"]);
    assert_eq!(
        a.call(|| async { Ok::<_, &str>(()) }).await,
        Ok(()),
        "a's pipeline lost its bulkhead stage with the section"
    );
    assert_eq!(
        r.bulkhead("a").unwrap().capacity(),
        100,
        "a's bulkhead now on the defaults"
    );
    drop(held);
}

/// Docs (`Registry::reload`): a reload under which "a policy the registry holds could not be
/// built, such as a bulkhead whose `max_concurrent` was only in a section now removed" is
/// refused — a lenient removal included — and nothing changes.
#[test]
fn a_lenient_removal_that_leaves_a_held_policy_unbuildable_is_refused_whole() {
    let r = registry(
        "[instances.a.bulkhead]\nmax_concurrent = 3\n[instances.b.bulkhead]\nmax_concurrent = 1\n",
        false,
    );
    let b = r.bulkhead("b").unwrap();
    let e = err(r.reload(cfg("[instances.b.bulkhead]\nmax_concurrent = 9\n")));
    assert_eq!(e.problem(), &Problem::Missing, "{e}");
    assert_eq!(b.capacity(), 1);
    assert_eq!(declared(&r), ["a", "b"]);
}

/// Docs (`Reload::removed`): "Instances the configuration before declared and the new one does
/// not, whose policies the registry holds: they now run on the layers that remain (the
/// defaults), and count in `retuned`." Several instances removed at once: each named once
/// (however many of its policies are held), none that held nothing, none never declared.
#[test]
fn a_lenient_reload_removing_several_names_each_once() {
    let defaults = r#"
        [defaults.breaker]
        window_calls = 50
        [defaults.bulkhead]
        max_concurrent = 9
        [defaults.rate_limit]
        count = 100
        period = "1s"
        "#;
    let old = format!(
        r#"{defaults}
        [instances.a]
        budget = {{}}
        [instances.a.breaker]
        window_calls = 10
        [instances.a.bulkhead]
        max_concurrent = 1
        [instances.b.breaker]
        [instances.c.rate_limit]
        count = 5
        period = "1s"
        [instances.d]
        deadline = "1s"
        [instances.e.breaker]
        [instances."z.y".breaker]
        "#
    );
    let r = registry(&old, false);
    let ghost = r.breaker("ghost").unwrap();
    let a_breaker = r.breaker("a").unwrap();
    let a_bulkhead = r.bulkhead("a").unwrap();
    assert_eq!(a_breaker.policy().window(), Window::Count { calls: 10 });

    let reload = r
        .reload(cfg(&format!("{defaults}\n[instances.e.breaker]\n")))
        .unwrap();
    let removed = removed_sorted(&reload);
    assert_eq!(removed, ["a", "b", "c", "z.y"], "{reload:?}");
    let unique: BTreeSet<&String> = removed.iter().collect();
    assert_eq!(unique.len(), removed.len(), "each once");
    // a's breaker, bulkhead and budget, b's breaker, c's rate limiter, z.y's breaker.
    assert!(
        reload.retuned >= 6,
        "removed policies count in retuned: {reload:?}"
    );

    assert_eq!(
        a_breaker.policy().window(),
        Window::Count { calls: 50 },
        "on the defaults"
    );
    assert_eq!(a_bulkhead.capacity(), 9, "on the defaults");
    assert_eq!(ghost.policy().window(), Window::Count { calls: 50 });
    // Same handles, still held; but no longer declared.
    assert_eq!(
        r.breaker("a").unwrap().policy().window(),
        Window::Count { calls: 50 }
    );
    assert_eq!(problem(r.pipeline("a")), Problem::Undeclared);
    assert_eq!(problem(r.pipeline("d")), Problem::Undeclared);

    // Reloading the same file again removes nothing more.
    let again = r
        .reload(cfg(&format!("{defaults}\n[instances.e.breaker]\n")))
        .unwrap();
    assert!(again.removed.is_empty(), "{again:?}");

    // Declaring one back and removing it again names it again.
    let back = r
        .reload(cfg(&format!(
            "{defaults}\n[instances.e.breaker]\n[instances.a.breaker]\nwindow_calls = 10\n"
        )))
        .unwrap();
    assert!(back.removed.is_empty(), "{back:?}");
    assert_eq!(a_breaker.policy().window(), Window::Count { calls: 10 });
    let gone = r
        .reload(cfg(&format!("{defaults}\n[instances.e.breaker]\n")))
        .unwrap();
    assert_eq!(removed_sorted(&gone), ["a"], "{gone:?}");
}

/// Docs (`Reload::removed`): only instances "whose policies the registry holds". A keyed
/// instance whose table was never asked for holds nothing; once asked for, its removal is
/// named. Strict (`RegistryBuilder::strict`): "a reload that removes an instance the registry
/// holds a policy of" is refused — a keyed table being the only thing held included.
#[test]
fn removing_an_instance_whose_only_held_thing_is_a_keyed_table() {
    let with_k = "[instances.keep.breaker]\n[instances.k.breaker]\nconsecutive_failures = 2\n[instances.k.keys]\n";
    let without_k = "[instances.keep.breaker]\n";

    // Strict, nothing of k held: the removal is fine.
    let r = registry(with_k, true);
    assert!(r.keyed_tables().is_empty(), "tables are made on first use");
    let applied = r.reload(cfg(without_k)).expect("k held nothing");
    assert!(applied.removed.is_empty(), "{applied:?}");
    assert_eq!(problem(r.keyed_breaker::<String>("k")), Problem::Undeclared);
    r.reload(cfg(with_k)).unwrap();

    // Strict, k's table held: refused, and nothing changes.
    let table = r.keyed_breaker::<String>("k").unwrap();
    assert_eq!(r.keyed_tables().len(), 1);
    let e = err(r.reload(cfg(without_k)));
    assert_eq!(e.problem(), &Problem::Removed, "{e}");
    assert!(declared(&r).contains(&"k".to_string()));
    drop(table);

    // Lenient, k's table held: applied, k named.
    let r = registry(with_k, false);
    let _table = r.keyed_breaker::<String>("k").unwrap();
    let reload = r.reload(cfg(without_k)).unwrap();
    assert_eq!(removed_sorted(&reload), ["k"], "{reload:?}");

    // Lenient, k never asked for: not named.
    let r = registry(with_k, false);
    let reload = r.reload(cfg(without_k)).unwrap();
    assert!(reload.removed.is_empty(), "{reload:?}");
}

/// Strict (`RegistryBuilder::strict`): a reload "that removes an instance the registry holds a
/// policy of" is refused. An instance of no section holds nothing until something asks for
/// it; then (a pipeline, or a policy from the defaults) it does. A refused strict reload
/// builds nothing of the instances it adds.
#[test]
fn strict_removal_of_an_instance_of_no_section() {
    let with_e = "[instances.keep.breaker]\n[instances.e]\ndeadline = \"1s\"\n";
    let without_e = "[instances.keep.breaker]\n[instances.new.breaker]\n";

    let r = registry(with_e, true);
    let applied = r.reload(cfg(without_e)).expect("nothing of e held");
    assert!(
        applied.removed.is_empty(),
        "strict never names removals: {applied:?}"
    );

    for ask in ["pipeline", "breaker", "retry_budget"] {
        let r = registry(with_e, true);
        match ask {
            "pipeline" => drop(r.pipeline("e").unwrap()),
            "breaker" => drop(r.breaker("e").unwrap()),
            _ => drop(r.retry_budget("e").unwrap()),
        }
        let e = err(r.reload(cfg(without_e)));
        assert_eq!(e.problem(), &Problem::Removed, "{ask}: {e}");
        assert_eq!(
            names(r.breakers()),
            if ask == "breaker" {
                vec!["e", "keep"]
            } else {
                vec!["keep"]
            },
            "{ask}: new not built"
        );
        assert_eq!(problem(r.breaker("new")), Problem::Undeclared, "{ask}");
    }
}

/// Inheritance and renames. Docs (module): "`[configs.<name>]`: named bases" — not instances;
/// (`Problem::Removed`): "A reload's configuration no longer declares an instance whose
/// pipeline ... the registry holds". A name kept only as a base, or an instance renamed, is
/// no longer declared.
#[test]
fn a_pipeline_instance_renamed_or_turned_into_a_base_is_a_removal() {
    let old = r#"
        [configs.crit.breaker]
        consecutive_failures = 2
        [instances.a]
        base = "crit"
        [instances.b.breaker]
        window_calls = 10
        "#;
    let r = registry(old, false);
    let _a = r.pipeline("a").unwrap();

    let renamed = "[configs.crit.breaker]\nconsecutive_failures = 2\n[instances.a2]\nbase = \"crit\"\n[instances.b.breaker]\nwindow_calls = 10\n";
    assert_eq!(problem(r.reload(cfg(renamed))), Problem::Removed);
    let as_base = "[configs.crit.breaker]\nconsecutive_failures = 2\n[configs.a.breaker]\n[instances.b.breaker]\nwindow_calls = 10\n";
    assert_eq!(problem(r.reload(cfg(as_base))), Problem::Removed);
    let base_named_a = "[configs.a.breaker]\nconsecutive_failures = 2\n[instances.x]\nbase = \"a\"\n[instances.b.breaker]\nwindow_calls = 10\n";
    assert_eq!(problem(r.reload(cfg(base_named_a))), Problem::Removed);
    assert!(declared(&r).contains(&"a".to_string()));

    // Another base: still declared, applied.
    let rebased = "[configs.other.breaker]\nconsecutive_failures = 7\n[instances.a]\nbase = \"other\"\n[instances.b.breaker]\nwindow_calls = 10\n";
    let reload = r.reload(cfg(rebased)).unwrap();
    assert!(reload.removed.is_empty(), "{reload:?}");

    // Renaming b, which has no pipeline: lenient, applied, b named.
    let b = r.breaker("b").unwrap();
    let b_renamed = "[configs.other.breaker]\nconsecutive_failures = 7\n[instances.a]\nbase = \"other\"\n[instances.b2.breaker]\nwindow_calls = 10\n";
    let reload = r.reload(cfg(b_renamed)).unwrap();
    assert_eq!(removed_sorted(&reload), ["b"], "{reload:?}");
    assert!(reload.built >= 1, "b2's breaker is new: {reload:?}");
    assert_ne!(
        b.policy().window(),
        Window::Count { calls: 10 },
        "b on the defaults now"
    );
    assert_eq!(problem(r.pipeline("b")), Problem::Undeclared);
    assert!(r.pipeline("b2").is_ok());

    // Strict: the same rename of a held instance is refused.
    let s = registry(old, true);
    assert_eq!(
        problem(
            s.reload(cfg(renamed
                .replace("[instances.a2]", "[instances.a]")
                .replace("instances.b.", "instances.b2.")
                .as_str()))
        ),
        Problem::Removed
    );
}

/// Docs (`Registry::http_client`): an `[http]` instance is "built up front" and "a reload that
/// removes a held client's instance" is refused; "A reload that removes `[http]` keeps the
/// client", so removing the instance after that is still refused. A client got for a declared
/// instance without `[http]` is held too.
#[test]
fn http_client_instances_cannot_be_removed() {
    let old = "[instances.out]\nhttp = {}\n[instances.out.breaker]\nconsecutive_failures = 5\n[instances.plain.breaker]\n[instances.other.breaker]\n";
    let r = registry(old, false);
    // Never asked for, but built up front: held.
    let e = err(r.reload(cfg(
        "[instances.plain.breaker]\n[instances.other.breaker]\n",
    )));
    assert_eq!(e.problem(), &Problem::Removed, "{e}");
    assert_eq!(e.path(), "instances.out");

    // [http] removed, instance kept: applied; the client is still held.
    r.reload(cfg("[instances.out.breaker]\nconsecutive_failures = 5\n[instances.plain.breaker]\n[instances.other.breaker]\n"))
        .unwrap();
    assert_eq!(names(r.http_clients()), ["out"]);
    assert_eq!(
        problem(r.reload(cfg(
            "[instances.plain.breaker]\n[instances.other.breaker]\n"
        ))),
        Problem::Removed
    );

    // A client of a declared instance without [http].
    let client = r.http_client("plain");
    assert!(client.is_ok(), "declared: {:?}", client.err());
    let e = err(r.reload(cfg(
        "[instances.out.breaker]\nconsecutive_failures = 5\n[instances.other.breaker]\n",
    )));
    assert_eq!(
        (e.problem(), e.path()),
        (&Problem::Removed, "instances.plain")
    );

    // other has neither: lenient, its removal applies.
    let reload = r
        .reload(cfg(
            "[instances.out.breaker]\nconsecutive_failures = 5\n[instances.plain.breaker]\n",
        ))
        .unwrap();
    assert_eq!(removed_sorted(&reload), ["other"]);
}

/// A removal refused through `reload_file` (docs: "otherwise as [`reload`](Self::reload)"),
/// then an unreadable file (`Problem::Read`), then a valid file.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn reload_file_refuses_a_removal_then_applies_a_valid_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidewall.toml");
    let old = "[instances.a.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n[instances.b.bulkhead]\nmax_concurrent = 2\n";
    std::fs::write(&path, old).unwrap();
    let r = Registry::new(cfg(&std::fs::read_to_string(&path).unwrap())).unwrap();
    let a = r.pipeline("a").unwrap();
    let b = r.bulkhead("b").unwrap();

    std::fs::write(&path, "[instances.b.bulkhead]\nmax_concurrent = 4\n").unwrap();
    let e = err(r.reload_file(&path));
    assert_eq!(e.problem(), &Problem::Removed, "{e}");
    assert_eq!(b.capacity(), 2);

    let e = err(r.reload_file(dir.path().join("missing.toml")));
    assert!(matches!(e.problem(), Problem::Read(_)), "{e}");

    std::fs::write(
        &path,
        "[instances.a]\n[instances.b.bulkhead]\nmax_concurrent = 4\n",
    )
    .unwrap();
    // a's bulkhead is held (the pipeline made it), and no layer now sets its max_concurrent.
    let e = err(r.reload_file(&path));
    assert_eq!(e.problem(), &Problem::Missing, "{e}");
    std::fs::write(
        &path,
        "[defaults.bulkhead]\nmax_concurrent = 3\n[instances.a]\n[instances.b.bulkhead]\nmax_concurrent = 4\n",
    )
    .unwrap();
    let reload = r.reload_file(&path).unwrap();
    assert!(reload.removed.is_empty());
    assert_eq!(b.capacity(), 4);
    assert_eq!(a.call(|| async { Ok::<_, &str>(1) }).await, Ok(1));
}

/// The file watcher (docs, `ConfigWatch`): "one item per change of the file, the [`Reload`] it
/// made or why it was refused (the old configuration then stays in force, whole)". A removal
/// of a pipeline's instance comes out as `Removed`; the next valid edit applies.
#[cfg(feature = "watch")]
#[test]
fn the_watcher_refuses_a_removal_and_applies_the_next_edit() {
    use futures_util::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidewall.toml");
    let replace = |text: &str| {
        let tmp = dir.path().join("tidewall.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    replace(
        "[instances.a.bulkhead]\nmax_concurrent = 1\n[instances.b.bulkhead]\nmax_concurrent = 2\n",
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let r = Arc::new(Registry::new(cfg(&std::fs::read_to_string(&path).unwrap())).unwrap());
        let _a = r.pipeline("a").unwrap();
        let b = r.bulkhead("b").unwrap();
        let mut reloads =
            tidewall::config::watch_file_on(&Tokio, Arc::clone(&r), &path, Duration::from_millis(50)).unwrap();

        replace("[instances.b.bulkhead]\nmax_concurrent = 7\n");
        let refused = match reloads.next().await.unwrap() {
            Ok(reload) => panic!("a removal of a pipeline's instance applied: {reload:?}"),
            Err(refused) => refused,
        };
        assert_eq!(refused.problem(), &Problem::Removed, "{refused}");
        assert_eq!(b.capacity(), 2, "the old configuration stays, whole");

        replace("[defaults.bulkhead]\nmax_concurrent = 5\n[instances.a]\n[instances.b.bulkhead]\nmax_concurrent = 7\n");
        for _ in 0..10 {
            match reloads.next().await.unwrap() {
                Ok(reload) => assert!(reload.removed.is_empty(), "{reload:?}"),
                Err(e) => assert_eq!(e.problem(), &Problem::Removed, "only the removal again: {e}"),
            }
            if b.capacity() == 7 {
                break;
            }
        }
        assert_eq!(b.capacity(), 7);
        assert!(r.pipeline("a").is_ok());
    });
}

// ---------------------------------------------------------------------------------------------
// max_instances
// ---------------------------------------------------------------------------------------------

/// Docs (`RegistryBuilder::max_instances`): "Every declared instance keeps a place in each
/// kind ...; a name the file does not declare gets [`Problem::Full`] when only reserved places
/// are left." A lookup refused as undeclared must say `Undeclared` (not `Full`) and take no
/// place.
#[test]
fn undeclared_refusals_take_no_place_and_say_undeclared_not_full() {
    // Lenient: one free place per kind beside a's.
    let r = Registry::builder(cfg("[instances.a.breaker]\n"))
        .runtime(Clocked::new(Tokio))
        .max_instances(2)
        .build()
        .unwrap();
    for i in 0..200 {
        assert_eq!(problem(r.pipeline(&format!("g{i}"))), Problem::Undeclared);
        assert_eq!(
            problem(r.http_client(&format!("g{i}"))),
            Problem::Undeclared
        );
    }
    assert!(r.pipelines().is_empty() && r.http_clients().is_empty());
    assert!(r.breaker("g1").is_ok(), "the free place is still free");
    assert_eq!(problem(r.breaker("g2")), Problem::Full { max: 2 });
    assert_eq!(
        problem(r.pipeline("g2")),
        Problem::Undeclared,
        "undeclared, whatever the room"
    );
    assert!(r.pipeline("a").is_ok(), "a's place is kept");

    // Only reserved places left: a pipeline of an undeclared name is still Undeclared.
    let r = Registry::builder(cfg("[instances.a.breaker]\n"))
        .runtime(Clocked::new(Tokio))
        .max_instances(1)
        .build()
        .unwrap();
    assert_eq!(problem(r.breaker("g")), Problem::Full { max: 1 });
    assert_eq!(problem(r.pipeline("g")), Problem::Undeclared);
    assert_eq!(problem(r.http_client("g")), Problem::Undeclared);

    // Strict: undeclared before full, and refusals take no place a later reload needs.
    let s = Registry::builder(cfg("[instances.a.breaker]\n"))
        .runtime(Clocked::new(Tokio))
        .max_instances(2)
        .strict(true)
        .build()
        .unwrap();
    for i in 0..200 {
        assert_eq!(problem(s.breaker(&format!("g{i}"))), Problem::Undeclared);
        assert_eq!(
            problem(s.keyed_breaker::<u32>(&format!("g{i}"))),
            Problem::Undeclared
        );
        assert_eq!(problem(s.pipeline(&format!("g{i}"))), Problem::Undeclared);
    }
    let reload = s
        .reload(cfg("[instances.a.breaker]\n[instances.b.breaker]\n"))
        .expect("room for b");
    assert_eq!(reload.built, 1, "{reload:?}");
    assert!(s.pipeline("b").is_ok());

    // Lenient: pipelines refused as undeclared take no pipeline place either.
    let r = Registry::builder(cfg("[instances.a.breaker]\n"))
        .runtime(Clocked::new(Tokio))
        .max_instances(2)
        .build()
        .unwrap();
    for i in 0..200 {
        let _ = r.pipeline(&format!("g{i}"));
    }
    r.reload(cfg("[instances.a.breaker]\n[instances.b.breaker]\n"))
        .unwrap();
    assert!(r.pipeline("a").is_ok() && r.pipeline("b").is_ok());
    assert_eq!(names(r.pipelines()), ["a", "b"]);
}

// ---------------------------------------------------------------------------------------------
// Listeners
// ---------------------------------------------------------------------------------------------

/// Docs (`RegistryBuilder::on_event`): "a listener may look the registry up then, but its own
/// reload is refused ([`Problem::Reentrant`])"; (`Problem::Reentrant`): "called on the thread
/// already reloading that registry ... Waiting for the reload in progress would be waiting
/// for itself." A reentrant reload that would also remove a pipeline's instance is refused
/// as `Reentrant` (it is never looked at), and the outer reload applies unaffected.
#[test]
fn a_listener_reloading_from_inside_gets_reentrant_not_removed() {
    for strict in [false, true] {
        let slot: Arc<OnceLock<Weak<Registry<Clk>>>> = Arc::new(OnceLock::new());
        let seen: Arc<Mutex<Vec<(String, Result<Reload, Invalid>, Problem, Problem)>>> =
            Arc::new(Mutex::new(Vec::new()));
        let (slot2, seen2) = (Arc::clone(&slot), Arc::clone(&seen));
        let armed = Arc::new(AtomicBool::new(false));
        let armed2 = Arc::clone(&armed);
        let r = Arc::new(
            Registry::builder(cfg(
                "[instances.a.breaker]\nwindow_calls = 10\n[instances.b.breaker]\n",
            ))
            .runtime(Clocked::new(Tokio))
            .strict(strict)
            .on_event(move |event| {
                if !armed2.load(Ordering::SeqCst) {
                    return;
                }
                if let tidewall::telemetry::EventKind::StateChanged(_) = event.kind {
                    let r = slot2.get().unwrap().upgrade().unwrap();
                    let inner = r.reload(Config::from_toml("[instances.b.breaker]\n").unwrap());
                    let ghost = problem(r.pipeline("ghost"));
                    let got_a = r
                        .pipeline("a")
                        .map(drop)
                        .err()
                        .map_or(Problem::Missing, |e| e.problem().clone());
                    seen2
                        .lock()
                        .unwrap()
                        .push((event.name.to_string(), inner, ghost, got_a));
                }
            })
            .build()
            .unwrap(),
        );
        slot.set(Arc::downgrade(&r)).unwrap();
        let a = r.pipeline("a").unwrap();
        armed.store(true, Ordering::SeqCst);

        // a's window changes shape: a reset, told on this thread.
        let outer = r
            .reload(cfg(
                "[instances.a.breaker]\nwindow_calls = 20\n[instances.b.breaker]\n",
            ))
            .expect("the outer reload applies");
        assert_eq!(
            outer
                .reset
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
            ["a"]
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "one reset, one event");
        let (name, inner, ghost, got_a) = &seen[0];
        assert_eq!(name, "a");
        let inner = inner.as_ref().expect_err("a reentrant reload is refused");
        assert_eq!(
            inner.problem(),
            &Problem::Reentrant,
            "strict={strict}: {inner}"
        );
        assert_eq!(inner.path(), "", "docs: empty path for Reentrant");
        assert_eq!(
            ghost,
            &Problem::Undeclared,
            "lookups still work from the listener"
        );
        assert_eq!(
            got_a,
            &Problem::Missing,
            "(Missing here stands for Ok) a is served"
        );
        assert_eq!(
            r.breaker("a").unwrap().policy().window(),
            Window::Count { calls: 20 }
        );
        drop(a);
        assert!(
            declared(&r).contains(&"a".to_string()),
            "the inner reload did not apply"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// The reload counters as a debugging recorder has them. Its snapshots drain counters (each
/// snapshot reports what was added since the last one), so this keeps the running totals;
/// `None` for a series never registered.
#[cfg(feature = "metrics")]
struct ReloadCounts {
    snapshotter: metrics_util::debugging::Snapshotter,
    totals: std::collections::HashMap<String, u64>,
}

#[cfg(feature = "metrics")]
impl ReloadCounts {
    /// (applied, refused) so far.
    fn read(&mut self) -> (Option<u64>, Option<u64>) {
        use metrics_util::debugging::DebugValue;
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let k = key.key();
            if k.name() != "tidewall_config_reloads_total" {
                continue;
            }
            let outcome = k
                .labels()
                .find(|l| l.key() == "outcome")
                .map(|l| l.value().to_string())
                .unwrap();
            let DebugValue::Counter(n) = value else {
                panic!("not a counter: {value:?}")
            };
            *self.totals.entry(outcome).or_default() += n;
        }
        (
            self.totals.get("applied").copied(),
            self.totals.get("refused").copied(),
        )
    }
}

/// Docs (`Registry::reload`): "each reload counts in
/// `tidewall_config_reloads_total{outcome="applied"|"refused"}` (both series exist from the
/// registry's start), [`reload_file`]'s unreadable or unparsable files included." A removal
/// refused counts as refused; an undeclared lookup is no reload and counts nothing.
#[cfg(feature = "metrics")]
#[test]
fn refused_removals_count_as_refused_reloads() {
    use metrics_util::debugging::DebuggingRecorder;

    for strict in [false, true] {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let r = metrics::with_local_recorder(&recorder, || {
            Registry::builder(cfg("[instances.a.breaker]\n[instances.b.breaker]\n"))
                .runtime(Clocked::new(Tokio))
                .strict(strict)
                .build()
                .unwrap()
        });
        let mut counts = ReloadCounts {
            snapshotter,
            totals: Default::default(),
        };
        assert_eq!(
            counts.read(),
            (Some(0), Some(0)),
            "both series from the start"
        );

        let _a = r.pipeline("a").unwrap();
        assert_eq!(problem(r.pipeline("ghost")), Problem::Undeclared);
        assert_eq!(counts.read(), (Some(0), Some(0)), "a lookup is no reload");

        assert_eq!(
            problem(r.reload(cfg("[instances.b.breaker]\n"))),
            Problem::Removed
        );
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            problem(r.reload_file(dir.path().join("none.toml"))),
            Problem::Read(_)
        ));
        let path = dir.path().join("t.toml");
        std::fs::write(&path, "[instances.b.breaker]\nconsecutive_failures = 2\n").unwrap();
        assert_eq!(problem(r.reload_file(&path)), Problem::Removed);
        assert_eq!(counts.read(), (Some(0), Some(3)), "strict={strict}");

        std::fs::write(
            &path,
            "[instances.a.breaker]\n[instances.b.breaker]\nconsecutive_failures = 2\n",
        )
        .unwrap();
        r.reload_file(&path).unwrap();
        assert_eq!(counts.read(), (Some(1), Some(3)), "strict={strict}");
    }
}

// ---------------------------------------------------------------------------------------------
// Races
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Lookup {
    Ok,
    Undeclared,
    Other,
}

fn outcome<T>(result: Result<T, Invalid>) -> Lookup {
    match result {
        Ok(_) => Lookup::Ok,
        Err(e) if e.problem() == &Problem::Undeclared => Lookup::Undeclared,
        Err(e) => {
            eprintln!("unexpected refusal: {e}");
            Lookup::Other
        }
    }
}

fn spin(n: u64) {
    for _ in 0..n {
        std::hint::spin_loop();
    }
}

/// Runs `round` (given its number, from 1) until `max` rounds have run or `budget` has passed;
/// returns how many ran.
fn run_rounds(max: u32, budget: Duration, mut round: impl FnMut(u32)) -> u32 {
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < max && start.elapsed() < budget {
        rounds += 1;
        round(rounds);
    }
    rounds
}

/// One race of lookups against a reload of `r` to `after`: two workers `w` (0 and 1), each
/// after a seeded spin, make 20 lookups `i` (0 to 19), `lookup(r, kind + i + w)`, where `kind`
/// is a seeded draw below or equal to `kinds` (0 with `None`); meanwhile this thread, after
/// its own seeded spin, reloads. Returns every worker's lookups and the reload's result.
fn race_a_removal(
    r: &Arc<Registry<Clk>>,
    after: &str,
    rng: &mut SplitMix64,
    kinds: Option<u64>,
    lookup: fn(&Registry<Clk>, u64) -> Lookup,
) -> (Vec<Lookup>, Result<Reload, Invalid>) {
    let barrier = Arc::new(Barrier::new(3));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (r, barrier) = (Arc::clone(r), Arc::clone(&barrier));
            let delay = rng.below_or_equal(2_000);
            let kind = kinds.map_or(0, |k| rng.below_or_equal(k));
            std::thread::spawn(move || {
                barrier.wait();
                spin(delay);
                (0..20)
                    .map(|i| lookup(&r, kind + i + w))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let delay = rng.below_or_equal(4_000);
    barrier.wait();
    spin(delay);
    let reload = r.reload(cfg(after));
    let got = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    (got, reload)
}

/// Either the removal applied and every lookup racing it was refused as `Undeclared`, or it
/// was refused as `Removed` and every lookup was served. Returns the reload if it applied.
fn all_or_nothing<'a>(
    round: u32,
    reload: &'a Result<Reload, Invalid>,
    got: &[Lookup],
) -> Option<&'a Reload> {
    match reload {
        Ok(reload) => {
            assert!(
                got.iter().all(|g| *g == Lookup::Undeclared),
                "round {round}: the removal applied although x was served: {got:?} {reload:?}"
            );
            Some(reload)
        }
        Err(e) => {
            assert_eq!(e.problem(), &Problem::Removed, "round {round}: {e}");
            assert!(
                got.iter().all(|g| *g == Lookup::Ok),
                "round {round}: x still declared, yet refused: {got:?}"
            );
            None
        }
    }
}

/// `label`'s race, up to 400 rounds or 1.5 s (more than 10 rounds): each round a fresh
/// registry on `before` (`strict` or lenient) races `race_a_removal` to `after`, seeded from
/// `seed`; the outcome must be all or nothing, and `check` is handed the round, the registry
/// and, if the removal applied, the reload.
fn removal_races(
    label: &str,
    seed: u64,
    (before, after): (&str, &str),
    strict: bool,
    kinds: Option<u64>,
    lookup: fn(&Registry<Clk>, u64) -> Lookup,
    mut check: impl FnMut(u32, &Registry<Clk>, Option<&Reload>),
) {
    let mut rng = SplitMix64::new(seed);
    let (mut applied, mut refused) = (0, 0);
    let rounds = run_rounds(400, Duration::from_millis(1500), |round| {
        let r = Arc::new(registry(before, strict));
        let (got, reload) = race_a_removal(&r, after, &mut rng, kinds, lookup);
        let reload = all_or_nothing(round, &reload, &got);
        if reload.is_some() {
            applied += 1;
        } else {
            refused += 1;
        }
        check(round, &r, reload);
    });
    eprintln!("{label} race: {rounds} rounds, {applied} applied, {refused} refused");
    assert!(rounds > 10);
}

/// Strict, from several threads: lookups of `x` (declared, no section, nothing held) race a
/// reload that removes `x`. Docs: strict refuses "every lookup of a name the file does not
/// declare" and "a reload that removes an instance the registry holds a policy of". So either
/// the reload applied and every lookup was `Undeclared` (none held anything of `x`), or it was
/// refused with `Removed` and every lookup was served. Never a policy held for `x` once the
/// reload applied.
#[test]
fn strict_lookups_racing_a_removal_are_all_or_nothing() {
    let defaults = "[defaults.bulkhead]\nmax_concurrent = 4\n[defaults.rate_limit]\ncount = 10\nperiod = \"1s\"\n[defaults.adaptive]\nalgorithm = \"aimd\"\nmin_limit = 1\ninitial_limit = 2\n";
    let with_x = format!("{defaults}[instances.keep.breaker]\n[instances.x]\ndeadline = \"1s\"\n");
    let without_x = format!("{defaults}[instances.keep.breaker]\n");
    let lookup = |r: &Registry<Clk>, step| match step % 12 {
        0 => outcome(r.breaker("x")),
        1 => outcome(r.pipeline("x")),
        2 => outcome(r.retry_budget("x")),
        3 => outcome(r.bulkhead("x")),
        4 => outcome(r.rate_limiter("x")),
        5 => outcome(r.adaptive_limiter("x")),
        6 => outcome(r.http_client("x")),
        7 => outcome(r.keyed_breaker::<String>("x")),
        8 => outcome(r.keyed_bulkhead::<String>("x")),
        9 => outcome(r.keyed_rate_limiter::<String>("x")),
        10 => outcome(r.keyed_adaptive_limiter::<String>("x")),
        _ => outcome(r.chaos("x")),
    };
    let files = (with_x.as_str(), without_x.as_str());
    removal_races(
        "strict",
        0x5EED_0001,
        files,
        true,
        Some(11),
        lookup,
        |round, r, applied| {
            if applied.is_none() {
                assert!(declared(r).contains(&"x".to_string()));
                return;
            }
            for held in [
                names(r.breakers()),
                names(r.pipelines()),
                names(r.retry_budgets()),
                names(r.bulkheads()),
                names(r.http_clients()),
                names(r.chaos_handles()),
            ] {
                assert!(!held.contains(&"x".to_string()), "round {round}: {held:?}");
            }
            assert!(r.keyed_tables().iter().all(|t| t.name != "x"));
        },
    );
}

/// Lenient, from several threads: pipelines of `x` (declared, a breaker held from the start)
/// race a reload that removes `x`. Docs (`Registry::pipeline`): "A name the file does not
/// declare is refused ..., and so is a reload that removes this one's instance". Either the
/// reload applied (`x` in `removed`) and no pipeline of `x` was ever made, or it was refused
/// with `Removed` and every lookup was served.
#[test]
fn lenient_pipeline_lookups_racing_a_removal_never_leave_a_stack_of_an_undeclared_name() {
    let with_x = "[instances.keep.breaker]\n[instances.x.breaker]\n[instances.y]\nhttp = {}\n";
    let without_x = "[instances.keep.breaker]\n[instances.y]\nhttp = {}\n";
    let lookup = |r: &Registry<Clk>, step| {
        let got = if step % 2 == 0 {
            outcome(r.pipeline("x"))
        } else {
            outcome(r.http_client("x"))
        };
        // Plain policies stay get-or-create throughout.
        assert!(r.breaker("x").is_ok());
        got
    };
    let files = (with_x, without_x);
    removal_races(
        "lenient",
        0x5EED_0002,
        files,
        false,
        None,
        lookup,
        |round, r, applied| {
            if let Some(reload) = applied {
                assert_eq!(removed_sorted(reload), ["x"], "round {round}");
                assert!(!names(r.pipelines()).contains(&"x".to_string()));
                assert!(!names(r.http_clients()).contains(&"x".to_string()));
            }
        },
    );
}

/// Reloads from two threads, alternating a file that declares `x` and one that does not, while
/// two threads look up `x`'s pipeline. At the end (docs: nothing of a refused reload applies;
/// a pipeline's instance cannot be removed), every pipeline held is of an instance the
/// configuration in force declares; and once any lookup was served, the configuration in
/// force still declares `x`.
#[test]
fn concurrent_reloads_and_lookups_keep_every_held_stack_declared() {
    let with_x = "[instances.keep.breaker]\n[instances.x.breaker]\n";
    let without_x = "[instances.keep.breaker]\n";
    let mut rng = SplitMix64::new(0x5EED_0003);
    let rounds = run_rounds(200, Duration::from_millis(1500), |round| {
        for strict in [false, true] {
            let r = Arc::new(registry(without_x, strict));
            let barrier = Arc::new(Barrier::new(4));
            let mut handles = Vec::new();
            // Two pairs of a reloader and an asker; the reloaders favour opposite files.
            for (t, favoured, other) in [
                (0, with_x, without_x),
                (1, with_x, without_x),
                (0, without_x, with_x),
                (1, without_x, with_x),
            ] {
                let (r, barrier) = (Arc::clone(&r), Arc::clone(&barrier));
                let seed = rng.next_u64();
                handles.push(std::thread::spawn(move || {
                    let mut rng = SplitMix64::new(seed);
                    barrier.wait();
                    let mut served = 0;
                    for _ in 0..10 {
                        spin(rng.below_or_equal(500));
                        if t == 0 {
                            let file = if rng.below_or_equal(1) == 0 {
                                favoured
                            } else {
                                other
                            };
                            let _ = r.reload(cfg(file));
                        } else if r.pipeline("x").is_ok() {
                            served += 1;
                        }
                    }
                    served
                }));
            }
            let served: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
            let in_force = declared(&r);
            for held in names(r.pipelines()) {
                assert!(
                    in_force.contains(&held),
                    "round {round} strict={strict}: a pipeline of {held:?}, undeclared in {in_force:?}"
                );
            }
            if served > 0 {
                assert!(
                    in_force.contains(&"x".to_string()),
                    "round {round} strict={strict}"
                );
                assert!(r.reload(cfg(without_x)).is_err(), "x's pipeline is held");
            }
        }
    });
    assert!(rounds > 5);
}

// ---------------------------------------------------------------------------------------------
// Lookups made while a reload applies
// ---------------------------------------------------------------------------------------------

/// Which lookup a listener (or a thread) makes of the instance a reload removes.
#[derive(Clone, Copy, Debug)]
enum Ask {
    Pipeline,
    HttpClient,
    Breaker,
    KeyedBreaker,
    RetryBudget,
}

fn ask(r: &Registry<Clk>, what: Ask, name: &str) -> Lookup {
    match what {
        Ask::Pipeline => outcome(r.pipeline(name)),
        Ask::HttpClient => outcome(r.http_client(name)),
        Ask::Breaker => outcome(r.breaker(name)),
        Ask::KeyedBreaker => outcome(r.keyed_breaker::<String>(name)),
        Ask::RetryBudget => outcome(r.retry_budget(name)),
    }
}

/// Whether `r` holds what `what` makes for `name`.
fn holds(r: &Registry<Clk>, what: Ask, name: &str) -> bool {
    let name = name.to_string();
    match what {
        Ask::Pipeline => names(r.pipelines()).contains(&name),
        Ask::HttpClient => names(r.http_clients()).contains(&name),
        Ask::Breaker => names(r.breakers()).contains(&name),
        Ask::KeyedBreaker => r.keyed_tables().iter().any(|t| t.name == name.as_str()),
        Ask::RetryBudget => names(r.retry_budgets()).contains(&name),
    }
}

/// The cases: (strict, what is asked for). Lenient registries refuse only stacks of
/// undeclared names; strict ones every kind.
const DURING: [(bool, Ask); 7] = [
    (false, Ask::Pipeline),
    (false, Ask::HttpClient),
    (true, Ask::Pipeline),
    (true, Ask::HttpClient),
    (true, Ask::Breaker),
    (true, Ask::KeyedBreaker),
    (true, Ask::RetryBudget),
];

/// `a`'s breaker window changes shape (a reset, told on the reloading thread) in the same
/// reload that removes `gone` (declared with no section: nothing of it held).
const BEFORE: &str =
    "[instances.a.breaker]\nwindow_calls = 10\n[instances.gone]\ndeadline = \"1s\"\n";
const AFTER: &str = "[instances.a.breaker]\nwindow_calls = 20\n";

/// A registry on `text` (`strict` or lenient) whose listener is `listener`.
fn listened(
    text: &str,
    strict: bool,
    listener: impl Fn(&tidewall::telemetry::Event<'_>) + Send + Sync + 'static,
) -> Arc<Registry<Clk>> {
    Arc::new(
        Registry::builder(cfg(text))
            .runtime(Clocked::new(Tokio))
            .strict(strict)
            .on_event(listener)
            .build()
            .unwrap(),
    )
}

/// As `listened`, the listener handed the registry itself (events told before the registry
/// is built are not passed on).
fn self_listening(
    text: &str,
    strict: bool,
    listener: impl Fn(&Registry<Clk>, &tidewall::telemetry::Event<'_>) + Send + Sync + 'static,
) -> Arc<Registry<Clk>> {
    let slot: Arc<OnceLock<Weak<Registry<Clk>>>> = Arc::new(OnceLock::new());
    let slot2 = Arc::clone(&slot);
    let r = listened(text, strict, move |event| {
        if let Some(r) = slot2.get().and_then(Weak::upgrade) {
            listener(&r, event);
        }
    });
    slot.set(Arc::downgrade(&r)).unwrap();
    r
}

/// A registry on `text` whose listener, once the returned switch is on (it starts `armed`),
/// asks for `what` of `gone` each time it is told of a reset; and what the listener got.
fn asking_listener(
    text: &str,
    strict: bool,
    what: Ask,
    armed: bool,
) -> (Arc<Registry<Clk>>, Arc<AtomicBool>, Arc<Mutex<Vec<Lookup>>>) {
    let got: Arc<Mutex<Vec<Lookup>>> = Arc::new(Mutex::new(Vec::new()));
    let armed = Arc::new(AtomicBool::new(armed));
    let (got2, armed2) = (Arc::clone(&got), Arc::clone(&armed));
    let r = self_listening(text, strict, move |r, event| {
        if armed2.load(Ordering::SeqCst)
            && let tidewall::telemetry::EventKind::StateChanged(_) = event.kind
        {
            got2.lock().unwrap().push(ask(r, what, "gone"));
        }
    });
    (r, armed, got)
}

/// Docs (`RegistryBuilder::on_event`): "A reload tells of the resets it causes on its own
/// thread; a listener may look the registry up then". A listener that, told of the reset,
/// asks for a stack (or, strict, any policy) of the instance that same reload removes must
/// either be refused (`Undeclared`) — or be served, and then the reload must not apply
/// (`Removed`). Never: the reload applied and the registry holds a stack (strict: a policy)
/// of a name the configuration in force does not declare.
#[test]
fn a_listener_asking_for_the_removed_instance_during_the_reload() {
    for (strict, what) in DURING {
        let (r, _, got) = asking_listener(BEFORE, strict, what, true);
        let reload = r.reload(cfg(AFTER));
        let got = got.lock().unwrap().clone();
        eprintln!(
            "listener strict={strict} {what:?}: reload ok={} got {got:?}",
            reload.is_ok()
        );
        assert_eq!(got.len(), 1, "{strict} {what:?}: the reset was told once");
        match reload {
            Ok(_) => {
                assert!(
                    !holds(&r, what, "gone"),
                    "strict={strict} {what:?}: the reload applied and the registry holds a {what:?} \
                     of `gone`, which it no longer declares (the listener got {got:?})"
                );
                assert_eq!(got, [Lookup::Undeclared], "strict={strict} {what:?}");
            }
            Err(e) => {
                assert_eq!(
                    e.problem(),
                    &Problem::Removed,
                    "strict={strict} {what:?}: {e}"
                );
                assert_eq!(got, [Lookup::Ok], "strict={strict} {what:?}");
                assert!(declared(&r).contains(&"gone".to_string()));
            }
        }
        // Whatever the outcome, after it: a name not in force is refused.
        if !declared(&r).contains(&"gone".to_string()) {
            assert_eq!(
                ask(&r, what, "gone"),
                Lookup::Undeclared,
                "strict={strict} {what:?}"
            );
        }
    }
}

/// The same window, from another thread: the listener holds the reload at its reset while
/// another thread asks for the removed instance's stack (strict: policy); then the reload
/// goes on. The other thread must be refused, or wait for the reload (and then be refused),
/// or be served with the reload then refused — never served with the reload applied.
#[test]
fn another_thread_asking_for_the_removed_instance_while_the_reload_is_held_at_a_reset() {
    ask_while_held_at_a_reset(BEFORE, AFTER, |_| {}, "held");
}

/// Holds a reload from `before` to `after` at the first reset a listener hears (after
/// `prepare`), while another thread asks for the removed instance named `gone`.
fn ask_while_held_at_a_reset(before: &str, after: &str, prepare: fn(&Registry<Clk>), label: &str) {
    use std::sync::mpsc;
    for (strict, what) in DURING {
        let (paused_tx, paused_rx) = mpsc::channel::<()>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let paused_tx = Mutex::new(paused_tx);
        let go_rx = Mutex::new(go_rx);
        let armed = Arc::new(AtomicBool::new(false));
        let armed2 = Arc::clone(&armed);
        let r = listened(before, strict, move |event| {
            if let tidewall::telemetry::EventKind::StateChanged(_) = event.kind
                && armed2.swap(false, Ordering::SeqCst)
            {
                paused_tx.lock().unwrap().send(()).unwrap();
                go_rx.lock().unwrap().recv().unwrap();
            }
        });
        prepare(&r);
        armed.store(true, Ordering::SeqCst);
        let reloader = {
            let r = Arc::clone(&r);
            let after = cfg(after);
            std::thread::spawn(move || r.reload(after))
        };
        paused_rx.recv().unwrap();
        let (done_tx, done_rx) = mpsc::channel();
        let asker = {
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                let got = ask(&r, what, "gone");
                done_tx.send(()).unwrap();
                got
            })
        };
        // The asker either answers while the reload is held, or waits for it: let it go on
        // after a bounded wait either way (a lookup that waits is not a defect).
        let answered_while_held = done_rx.recv_timeout(Duration::from_millis(300)).is_ok();
        go_tx.send(()).unwrap();
        let reload = reloader.join().unwrap();
        let got = asker.join().unwrap();
        eprintln!(
            "{label} strict={strict} {what:?}: reload ok={} got {got:?} answered while held {answered_while_held}",
            reload.is_ok()
        );
        match reload {
            Ok(_) => {
                assert!(
                    !holds(&r, what, "gone"),
                    "strict={strict} {what:?}: the reload applied and the registry holds a {what:?} \
                     of `gone`, no longer declared (asker got {got:?}, answered while held: \
                     {answered_while_held})"
                );
                assert_eq!(got, Lookup::Undeclared, "strict={strict} {what:?}");
            }
            Err(e) => {
                assert_eq!(
                    e.problem(),
                    &Problem::Removed,
                    "strict={strict} {what:?}: {e}"
                );
                assert_eq!(got, Lookup::Ok, "strict={strict} {what:?}");
            }
        }
    }
}

/// Docs (`Registry::pipelines`): "Every pipeline got so far" — the registry holds a pipeline
/// after its handles are dropped, so its instance still cannot be removed; and the path of the
/// refusal names the instance as a key path (`instances."api.v2"`, as `Undeclared` does).
#[test]
fn a_dropped_pipeline_handle_still_holds_and_the_path_quotes_the_name() {
    let r = registry(
        "[instances.\"api.v2\".breaker]\n[instances.b.breaker]\n",
        false,
    );
    drop(r.pipeline("api.v2").unwrap());
    assert_eq!(names(r.pipelines()), ["api.v2"]);
    let e = err(r.reload(cfg("[instances.b.breaker]\n")));
    assert_eq!(e.problem(), &Problem::Removed);
    assert_eq!(e.path(), "instances.\"api.v2\"", "{e}");
    let undeclared = err(r.pipeline("api.v3"));
    assert_eq!(undeclared.path(), "instances.\"api.v3\"", "{undeclared}");
}

/// Docs (`Registry::chaos`): the seed is "fixed while the registry holds the handle ... one
/// that leaves it out keeps it". A lenient reload removing a chaos instance leaves its seed out
/// (nothing else sets it): applied, the instance named in `removed`; strict: refused.
#[cfg(feature = "chaos")]
#[test]
fn removing_a_fault_injectors_instance() {
    let old = "[instances.c.chaos]\nseed = 7\nerror_rate = 0.5\n[instances.keep.breaker]\n";
    let r = registry(old, false);
    let chaos = r.chaos("c").unwrap();
    let reload = r.reload(cfg("[instances.keep.breaker]\n")).unwrap();
    assert_eq!(removed_sorted(&reload), ["c"], "{reload:?}");
    assert_eq!(chaos.seed(), 7);
    assert_eq!(problem(r.pipeline("c")), Problem::Undeclared);

    let s = registry(old, true);
    assert_eq!(
        problem(s.reload(cfg("[instances.keep.breaker]\n"))),
        Problem::Removed
    );
    assert_eq!(problem(s.chaos("ghost")), Problem::Undeclared);
}

/// Lenient, threads looking up plain policies of `x` (declared, no section) while a reload
/// removes it: docs (`Reload::removed`) name it only if "the registry holds" its policies, so a
/// name in `removed` must be one whose policies the registry lists afterwards.
#[test]
fn lenient_removed_names_only_what_is_held() {
    let with_x = "[instances.keep.breaker]\n[instances.x]\ndeadline = \"1s\"\n";
    let without_x = "[instances.keep.breaker]\n";
    let mut rng = SplitMix64::new(0x5EED_0004);
    let mut named = 0;
    let rounds = run_rounds(300, Duration::from_millis(1000), |_| {
        let r = Arc::new(registry(with_x, false));
        let barrier = Arc::new(Barrier::new(2));
        let delay = rng.below_or_equal(3_000);
        let worker = {
            let (r, barrier) = (Arc::clone(&r), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                spin(delay);
                r.breaker("x").is_ok()
            })
        };
        barrier.wait();
        let reload = r
            .reload(cfg(without_x))
            .expect("lenient, no stack: applied");
        assert!(
            worker.join().unwrap(),
            "lenient: breakers are get-or-create"
        );
        if reload.removed.iter().any(|n| n == "x") {
            named += 1;
            assert!(names(r.breakers()).contains(&"x".to_string()));
        }
        assert_eq!(
            reload.removed.len(),
            usize::from(reload.removed.iter().any(|n| n == "x"))
        );
    });
    eprintln!("removed-named race: {rounds} rounds, x named in {named}");
}

/// `out` is an HTTP client with a breaker per host; its breaker window changes shape in the
/// same reload that removes `gone`. Docs (`Registry::http_client`): a reload "applies the new
/// settings with `ClientPolicies::reconfigure`"; its resets are told while "Nothing but that
/// turn is held meanwhile (not the registry's maps ...), so a listener told of either may look
/// the registry up".
const BEFORE_HTTP: &str = "[instances.out]\nhttp = {}\n[instances.out.breaker]\nwindow_calls = 10\n[instances.gone]\ndeadline = \"1s\"\n";
const AFTER_HTTP: &str = "[instances.out]\nhttp = {}\n[instances.out.breaker]\nwindow_calls = 20\n";

fn touch_a_host(r: &Registry<Clk>) {
    let client = r.http_client("out").unwrap();
    let hosts = client.breakers().expect("out has a breaker section");
    let host = tidewall::http::Authority::new("https", "api.example", None).unwrap();
    hosts.try_acquire(&host).unwrap().failure();
    assert!(hosts.state(&host).is_some());
}

/// As `a_listener_asking_for_the_removed_instance_during_the_reload`, told of an HTTP
/// client's host breaker reset instead.
#[test]
fn a_listener_told_of_a_client_reset_asking_for_the_removed_instance() {
    for (strict, what) in DURING {
        let (r, armed, got) = asking_listener(BEFORE_HTTP, strict, what, false);
        touch_a_host(&r);
        armed.store(true, Ordering::SeqCst);
        let reload = r.reload(cfg(AFTER_HTTP));
        let got = got.lock().unwrap().clone();
        eprintln!("client listener strict={strict} {what:?}: reload {reload:?} got {got:?}");
        assert!(
            !got.is_empty(),
            "strict={strict} {what:?}: the host breaker's reset was told"
        );
        match reload {
            Ok(reload) => {
                assert_eq!(
                    reload
                        .reset
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>(),
                    ["out"]
                );
                assert!(
                    !holds(&r, what, "gone"),
                    "strict={strict} {what:?}: the reload applied and the registry holds a {what:?} \
                     of `gone`, which it no longer declares (the listener got {got:?})"
                );
                assert!(
                    got.iter().all(|g| *g == Lookup::Undeclared),
                    "strict={strict} {what:?}: {got:?}"
                );
            }
            Err(e) => {
                assert_eq!(
                    e.problem(),
                    &Problem::Removed,
                    "strict={strict} {what:?}: {e}"
                );
                assert!(
                    got.iter().all(|g| *g == Lookup::Ok),
                    "strict={strict} {what:?}: {got:?}"
                );
            }
        }
    }
}

/// As `another_thread_asking_for_the_removed_instance_while_the_reload_is_held_at_a_reset`,
/// held at the HTTP client's host breaker reset, where the registry's maps are not held.
#[test]
fn another_thread_asking_while_the_reload_is_held_at_a_client_reset() {
    ask_while_held_at_a_reset(BEFORE_HTTP, AFTER_HTTP, touch_a_host, "client held");
}

/// Docs (`Problem::Fixed`): "The setting cannot change while the registry holds what it shapes
/// (a key table's `max_keys` ...)". A lenient removal of a keyed instance whose table is held
/// with its own `max_keys` would put the table back on the default bound: refused, whole.
/// Strict: refused too (as `Removed` or `Fixed`; the docs give no order), whole.
#[test]
fn removing_a_held_keyed_instance_with_its_own_bound() {
    let with_k = "[instances.keep.breaker]\nwindow_calls = 100\n[instances.k.breaker]\n[instances.k.keys]\nmax_keys = 7\n";
    let without_k = "[instances.keep.breaker]\nwindow_calls = 200\n";
    for strict in [false, true] {
        let r = registry(with_k, strict);
        let table = r.keyed_breaker::<String>("k").unwrap();
        let e = err(r.reload(cfg(without_k)));
        if strict {
            assert!(
                matches!(e.problem(), Problem::Removed | Problem::Fixed),
                "{e}"
            );
        } else {
            assert_eq!(e.problem(), &Problem::Fixed, "{e}");
        }
        assert_eq!(table.max_keys(), 7);
        assert_eq!(
            r.breaker("keep").unwrap().policy().window(),
            Window::Count { calls: 100 }
        );
        assert!(declared(&r).contains(&"k".to_string()));
    }
}

/// The refusals read as the docs show errors: `<path>: <why>`, the path first.
#[test]
fn undeclared_and_removed_display_their_path() {
    let r = registry("[instances.a.breaker]\n[instances.b.breaker]\n", false);
    let _a = r.pipeline("a").unwrap();
    let undeclared = err(r.pipeline("nope"));
    let removed = err(r.reload(cfg("[instances.b.breaker]\n")));
    for e in [&undeclared, &removed] {
        let text = e.to_string();
        assert!(text.starts_with(&format!("{}: ", e.path())), "{text}");
        assert!(text.len() > e.path().len() + 2, "{text}");
        eprintln!("{text}");
    }
    assert_eq!(removed.path(), "instances.a");
}

/// Docs (`Registry`): "The registry holds at most [`max_instances`] policies of each kind, and
/// keeps a place in each for every declared instance"; (`Registry::reload`, errors):
/// "[`Problem::Full`] when a kind holds too many policies to keep a place for every instance
/// it declares ... Nothing changes then." A lenient removal keeps the removed instance's
/// policies held (on the defaults); a reload that also declares a new instance must then fit
/// both, or be refused.
#[test]
fn a_lenient_removal_keeps_its_places() {
    for max in [1usize, 2] {
        let r = Registry::builder(cfg("[instances.a.breaker]\n"))
            .runtime(Clocked::new(Tokio))
            .max_instances(max)
            .build()
            .unwrap();
        if max == 2 {
            r.breaker("ghost").unwrap();
        }
        let before = names(r.breakers());
        let outcome = r.reload(cfg("[instances.b.breaker]\n"));
        eprintln!("max_instances({max}) removal+addition: {outcome:?}");
        match outcome {
            Ok(reload) => {
                assert!(
                    r.breakers().len() <= max,
                    "max_instances({max}): the registry holds {:?} after {reload:?}",
                    names(r.breakers())
                );
            }
            Err(e) => {
                assert_eq!(e.problem(), &Problem::Full { max }, "{e}");
                assert_eq!(names(r.breakers()), before, "nothing changes");
                assert_eq!(declared(&r), ["a"]);
            }
        }
        // Whatever happened, a declared instance's place is there for it.
        for name in declared(&r) {
            assert!(
                r.breaker(&name).is_ok(),
                "max_instances({max}): {name} lost its place"
            );
        }
        assert!(r.breakers().len() <= max, "{:?}", names(r.breakers()));
    }
}

/// Docs (`Invalid`): "Nothing is built from a configuration that gives one". A pipeline or
/// client refused as undeclared leaves none of its would-be stages behind (lenient: no
/// breaker, bulkhead, ... of that name appears), and a strict lookup refused for another
/// reason (`Missing`) holds nothing that would then block the instance's removal.
#[test]
fn refused_lookups_leave_nothing_behind() {
    let defaults = "[defaults.breaker]\nconsecutive_failures = 2\n[defaults.bulkhead]\nmax_concurrent = 3\n[defaults.rate_limit]\ncount = 5\nperiod = \"1s\"\n[defaults.retry]\nmax_attempts = 2\n[defaults.budget]\n";
    let r = registry(&format!("{defaults}[instances.a.breaker]\n"), false);
    let snapshot = |r: &Registry<Clk>| {
        (
            names(r.breakers()),
            names(r.bulkheads()),
            names(r.rate_limiters()),
            names(r.retry_budgets()),
            names(r.adaptive_limiters()),
            names(r.pipelines()),
            names(r.http_clients()),
            r.keyed_tables().len(),
        )
    };
    let before = snapshot(&r);
    for _ in 0..3 {
        assert_eq!(problem(r.pipeline("ghost")), Problem::Undeclared);
        assert_eq!(problem(r.http_client("ghost")), Problem::Undeclared);
    }
    assert_eq!(snapshot(&r), before);

    let s = registry(
        "[instances.keep.breaker]\n[instances.x]\ndeadline = \"1s\"\n",
        true,
    );
    assert_eq!(problem(s.bulkhead("x")), Problem::Missing);
    assert_eq!(problem(s.rate_limiter("x")), Problem::Missing);
    assert_eq!(problem(s.adaptive_limiter("x")), Problem::Missing);
    assert_eq!(problem(s.keyed_bulkhead::<u8>("x")), Problem::Missing);
    let reload = s
        .reload(cfg("[instances.keep.breaker]\n"))
        .expect("x holds nothing");
    assert!(reload.removed.is_empty());
}

/// Docs (`Invalid::path`): "The key path of what is wrong". An undeclared or removed name with
/// dots, quotes, backslashes, whitespace or unicode is written so the path reads back as a TOML
/// key path to that very instance.
#[test]
fn odd_names_read_back_from_the_path() {
    let r = registry("[instances.a.breaker]\n", true);
    for name in [
        "say \"hi\"",
        "a\nb",
        "x\\y",
        "",
        "ünï",
        "a b",
        "a-b_c",
        "a'b",
        "1.5",
        "tab\t",
        "a.b.c",
    ] {
        let path = err(r.breaker(name)).path().to_string();
        let table: toml::Table = toml::from_str(&format!("{path} = 1"))
            .unwrap_or_else(|e| panic!("{name:?}: {path} does not read back: {e}"));
        let instances = table["instances"].as_table().unwrap();
        assert_eq!(instances.keys().collect::<Vec<_>>(), [name], "{path}");
    }
}

/// Docs (`Reload::removed`): each removed instance once, however many kinds of its policies
/// (fault injector and a keyed table included) the registry holds.
#[cfg(feature = "chaos")]
#[test]
fn an_instance_holding_every_kind_is_named_once() {
    let defaults = "[defaults.bulkhead]\nmax_concurrent = 3\n[defaults.rate_limit]\ncount = 5\nperiod = \"1s\"\n";
    let old = format!(
        "{defaults}[instances.m]\nbudget = {{}}\nbreaker = {{}}\nretry = {{}}\n[instances.m.bulkhead]\nmax_concurrent = 1\n\
         [instances.m.rate_limit]\ncount = 1\nperiod = \"1s\"\n[instances.m.chaos]\nseed = 3\n[instances.keep.breaker]\n"
    );
    let r = registry(&old, false);
    r.keyed_breaker::<u8>("m").unwrap();
    r.keyed_bulkhead::<u8>("m").unwrap();
    r.chaos("m").unwrap();
    let reload = r
        .reload(cfg(&format!("{defaults}[instances.keep.breaker]\n")))
        .unwrap();
    assert_eq!(
        reload
            .removed
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        ["m"],
        "{reload:?}"
    );
    assert_eq!(r.bulkhead("m").unwrap().capacity(), 3);
}

/// Docs (`Problem::Reentrant`): "called on the thread already reloading that registry, or
/// reconfiguring one of its HTTP clients: from a listener, told of that reload's or
/// reconfiguration's own resets". Told of a client's host breaker reset, a listener's reload
/// that would remove the client's instance is `Reentrant`, not `Removed`.
#[test]
fn a_listener_reloading_from_a_client_reset_gets_reentrant() {
    let seen: Arc<Mutex<Vec<Problem>>> = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let armed = Arc::new(AtomicBool::new(false));
    let armed2 = Arc::clone(&armed);
    let r = self_listening(BEFORE_HTTP, false, move |r, event| {
        if armed2.load(Ordering::SeqCst)
            && let tidewall::telemetry::EventKind::StateChanged(_) = event.kind
        {
            let inner = r.reload(Config::from_toml("[instances.gone]\n").unwrap());
            seen2.lock().unwrap().push(problem(inner));
        }
    });
    touch_a_host(&r);
    armed.store(true, Ordering::SeqCst);
    let outer = r.reload(cfg(AFTER_HTTP)).expect("the outer reload applies");
    assert_eq!(
        outer
            .reset
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        ["out"]
    );
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|p| *p == Problem::Reentrant), "{seen:?}");
    assert!(declared(&r).contains(&"out".to_string()));
}

/// Docs (`RegistryBuilder::max_instances`): "a file may declare at most this many"; the check
/// holds for a reload too, before any removal is judged.
#[test]
fn a_reload_declaring_too_many_is_full() {
    let r = Registry::builder(cfg("[instances.a.breaker]\n"))
        .runtime(Clocked::new(Tokio))
        .max_instances(2)
        .build()
        .unwrap();
    let e = err(r.reload(cfg("[instances.a.breaker]\n[instances.b]\n[instances.c]\n")));
    assert_eq!(e.problem(), &Problem::Full { max: 2 }, "{e}");
    assert_eq!(declared(&r), ["a"]);
    let e = err(
        Registry::builder(cfg("[instances.a]\n[instances.b]\n[instances.c]\n"))
            .max_instances(2)
            .runtime(Clocked::new(Tokio))
            .build(),
    );
    assert_eq!(e.problem(), &Problem::Full { max: 2 });
}

/// Docs (`Registry::reload`): "A listener that panics as the reload applies ... leaves no
/// reload half done: every policy still takes its settings and the reload is counted as
/// applied; then the first such panic goes on to the caller." A lenient reload that removes
/// `x` and resets `a`, whose listener panics: `x` is no longer declared afterwards (its stack
/// refused), and the next reload on the same thread is not taken for a reentrant one.
#[test]
fn a_panicking_listener_during_a_removal_leaves_it_whole_and_the_thread_free() {
    let panics = Arc::new(AtomicBool::new(true));
    let panics2 = Arc::clone(&panics);
    let r = Registry::builder(cfg(
        "[instances.a.breaker]\nwindow_calls = 10\n[instances.x.breaker]\n",
    ))
    .runtime(Clocked::new(Tokio))
    .on_event(move |event| {
        if let tidewall::telemetry::EventKind::StateChanged(_) = event.kind
            && panics2.load(Ordering::SeqCst)
        {
            panic!("listener down");
        }
    })
    .build()
    .unwrap();
    let x = r.breaker("x").unwrap();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        r.reload(cfg("[instances.a.breaker]\nwindow_calls = 20\n"))
    }));
    assert!(
        unwound.is_err(),
        "the listener's panic goes on to the caller"
    );
    assert_eq!(declared(&r), ["a"], "applied whole");
    assert_eq!(
        r.breaker("a").unwrap().policy().window(),
        Window::Count { calls: 20 }
    );
    assert_eq!(problem(r.pipeline("x")), Problem::Undeclared);
    assert!(x.name() == "x");

    panics.store(false, Ordering::SeqCst);
    // The same thread reloads again: not Reentrant.
    let next = r.reload(cfg(
        "[instances.a.breaker]\nwindow_calls = 20\n[instances.y.breaker]\n",
    ));
    assert!(next.is_ok(), "{:?}", next.err());
    let _y = r.pipeline("y").unwrap();
    assert_eq!(
        problem(r.reload(cfg("[instances.a.breaker]\nwindow_calls = 20\n"))),
        Problem::Removed
    );
}

/// Docs (`RegistryBuilder::on_event`): only a listener told of a reload's own resets is
/// refused as `Reentrant`. After one was, a listener told of an ordinary event (a bulkhead's
/// refusal, no reload running) reloads like anyone: a removal of a held pipeline's instance
/// is then `Removed`, and a valid file applies.
#[test]
fn after_a_reentrant_refusal_a_listener_outside_a_reload_reloads_normally() {
    let seen: Arc<Mutex<Vec<(&'static str, Result<(), Problem>)>>> =
        Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let text = "[instances.a.breaker]\nwindow_calls = 10\n[instances.b.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n";
    let r = self_listening(text, false, move |r, event| {
        let reload = |label: &'static str, text: &str| {
            let got = r.reload(Config::from_toml(text).unwrap());
            let got = got.map(drop).map_err(|e| e.problem().clone());
            seen2.lock().unwrap().push((label, got));
        };
        match event.kind {
            tidewall::telemetry::EventKind::StateChanged(_) => {
                reload("reset", "[instances.b.bulkhead]\nmax_concurrent = 1\n");
            }
            tidewall::telemetry::EventKind::Rejected(_) => {
                reload(
                    "rejected-removal",
                    "[instances.b.bulkhead]\nmax_concurrent = 1\n",
                );
                reload(
                    "rejected-valid",
                    // The same window as in force: no reset, so no nested listener call.
                    "[instances.a.breaker]\nwindow_calls = 30\n[instances.b.bulkhead]\nmax_concurrent = 2\nmax_queue = 0\n",
                );
            }
            _ => {}
        }
    });
    let _a = r.pipeline("a").unwrap();
    r.reload(cfg(&text.replace("window_calls = 10", "window_calls = 30")))
        .unwrap();
    let b = r.bulkhead("b").unwrap();
    let _held = b.try_acquire_owned().unwrap();
    assert!(b.try_acquire().is_err(), "a refusal, told to the listener");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            ("reset", Err(Problem::Reentrant)),
            ("rejected-removal", Err(Problem::Removed)),
            ("rejected-valid", Ok(())),
        ]
    );
    assert_eq!(b.capacity(), 2);
}

/// Docs (telemetry table): `tidewall_config_reloads_total` counts reloads "from a watched file
/// too". A strict registry's watcher refusing a removal counts it as refused; the next valid
/// edit as applied.
#[cfg(all(feature = "watch", feature = "metrics"))]
#[test]
fn a_watched_removal_refused_by_a_strict_registry_is_counted() {
    use futures_util::StreamExt;
    use metrics_util::debugging::DebuggingRecorder;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidewall.toml");
    let replace = |text: &str| {
        let tmp = dir.path().join("tidewall.toml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    replace("[instances.a.breaker]\n[instances.b.breaker]\n");
    let recorder = DebuggingRecorder::new();
    let mut counts = ReloadCounts {
        snapshotter: recorder.snapshotter(),
        totals: Default::default(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let r = metrics::with_local_recorder(&recorder, || {
            Arc::new(
                Registry::builder(cfg(&std::fs::read_to_string(&path).unwrap()))
                    .strict(true)
                    .build()
                    .unwrap(),
            )
        });
        let mut reloads = tidewall::config::watch_file_on(
            &Tokio,
            Arc::clone(&r),
            &path,
            Duration::from_millis(50),
        )
        .unwrap();
        replace("[instances.b.breaker]\n");
        let mut refused = 0;
        match reloads.next().await.unwrap() {
            Ok(reload) => panic!("strict: a held instance removed: {reload:?}"),
            Err(e) => {
                assert_eq!(e.problem(), &Problem::Removed, "{e}");
                refused += 1;
            }
        }
        assert_eq!(counts.read(), (Some(0), Some(refused)));
        assert_eq!(declared(&r), ["a", "b"]);
        replace("[instances.a.breaker]\n[instances.b.breaker]\nconsecutive_failures = 2\n");
        let mut applied = 0;
        for _ in 0..10 {
            match reloads.next().await.unwrap() {
                Ok(_) => {
                    applied += 1;
                    break;
                }
                Err(e) => {
                    assert_eq!(
                        e.problem(),
                        &Problem::Removed,
                        "only the removal again: {e}"
                    );
                    refused += 1;
                }
            }
        }
        assert_eq!(counts.read(), (Some(applied), Some(refused)));
        assert_eq!(applied, 1);
    });
}
