//! Tests of [`super`].

use super::*;
use crate::github::HookConfig;

fn wanted() -> DesiredHook {
    DesiredHook {
        url: "https://hooks.example.com/hooks/ns/a".into(),
        events: vec!["push".into(), "issues".into()],
        active: true,
        content_type: "json".into(),
    }
}

fn hook(id: i64, url: &str) -> Hook {
    Hook {
        id,
        active: true,
        events: vec!["issues".into(), "push".into()],
        config: HookConfig { url: Some(url.into()), content_type: Some("json".into()) },
        last_response: None,
    }
}

#[test]
fn what_to_do_with_the_recorded_hook() {
    let same = hook(7, &wanted().url);
    let changed = Hook { active: false, ..same.clone() };
    let cases = [
        ("matches, key kept: nothing", Some(&same), false, true, Plan::Keep),
        ("matches, key lost: switch it", Some(&same), true, true, Plan::Update(HookChange::SecretReset)),
        (
            "differs, spec seen: someone changed GitHub",
            Some(&changed),
            false,
            true,
            Plan::Update(HookChange::Repaired),
        ),
        ("differs, spec edited", Some(&changed), false, false, Plan::Update(HookChange::Updated)),
        (
            "differs and key lost: the key reason wins",
            Some(&changed),
            true,
            false,
            Plan::Update(HookChange::SecretReset),
        ),
        ("gone or never made", None, false, true, Plan::Look),
    ];
    for (what, current, lost, seen, want) in cases {
        assert_eq!(plan(current, &wanted(), lost, seen), want, "{what}");
    }
}

#[test]
fn a_missing_hook_is_adopted_by_url_or_made() {
    let url = wanted().url;
    let others = vec![hook(1, "https://elsewhere.example.com/"), hook(2, &url)];
    let cases = [
        ("one delivers to our URL: adopted", others.clone(), None, (Some(2), HookChange::Adopted)),
        ("adopted even when another id was recorded", others, Some(9), (Some(2), HookChange::Adopted)),
        ("none: created", vec![hook(1, "https://elsewhere.example.com/")], None, (None, HookChange::Created)),
        ("none, one was recorded: recreated", vec![], Some(9), (None, HookChange::Recreated(9))),
    ];
    for (what, existing, known, want) in cases {
        assert_eq!(plan_new(&existing, &url, known), want, "{what}");
    }
}

fn at(repository: Option<&str>, organization: Option<&str>, token: &str) -> HookLocation {
    HookLocation {
        repository: repository.map(str::to_owned),
        organization: organization.map(str::to_owned),
        github: serde_json::from_value(
            serde_json::json!({"tokenSecretRef": {"name": token, "key": "token"}}),
        )
        .unwrap(),
    }
}

#[test]
fn a_spec_that_names_another_place_leaves_the_old_hook_to_delete() {
    let one = at(Some("o/one"), None, "t");
    let cases = [
        (
            "same place and credentials: nothing",
            Some(one.clone()),
            at(Some("o/one"), None, "t"),
            Some(4),
            None,
        ),
        ("another repository", Some(one.clone()), at(Some("o/two"), None, "t"), Some(4), Some(4)),
        ("an organization", Some(one.clone()), at(None, Some("o"), "t"), Some(4), Some(4)),
        ("other credentials", Some(one.clone()), at(Some("o/one"), None, "u"), Some(4), Some(4)),
        ("no hook recorded", Some(one.clone()), at(Some("o/two"), None, "t"), None, None),
        ("a status from before locations: taken as here", None, at(Some("o/two"), None, "t"), Some(4), None),
    ];
    for (what, recorded, here, known, want) in cases {
        let previous = moved(recorded.as_ref(), &here, known);
        assert_eq!(previous.as_ref().map(|p| p.id), want, "{what}");
        if let Some(p) = previous {
            assert_eq!(Some(p.location), recorded, "{what}: the old place is kept to reach the hook");
        }
    }
    // Other credentials on the same place: the hook is adopted again by
    // its URL, and is then the current one, never deleted.
    let previous = moved(Some(&one), &at(Some("o/one"), None, "u"), Some(4)).unwrap();
    assert!(is_current(&previous, &at(Some("o/one"), None, "u"), 4));
    assert!(!is_current(&previous, &at(Some("o/one"), None, "u"), 5), "a new hook there: the old one goes");
    assert!(!is_current(&previous, &at(Some("o/two"), None, "t"), 4), "same id elsewhere is another hook");
}

#[test]
fn github_signs_with_the_recorded_key_while_the_secret_has_it() {
    let keys = [HmacKey::new("100", "a"), HmacKey::new("200", "b")];
    let cases = [
        ("recorded and present", Some("100"), ("100", false)),
        ("recorded, gone from the Secret: the newest", Some("50"), ("200", true)),
        ("none recorded: the newest", None, ("200", true)),
    ];
    for (what, recorded, want) in cases {
        let (key, lost) = signing_key(&keys, recorded);
        assert_eq!((key.version(), lost), want, "{what}");
    }
}

#[test]
fn the_url_comes_from_the_spec_or_the_base() {
    let mut whc = WebhookConfig::new(
        "a",
        serde_json::from_value(serde_json::json!({
            "repository": "o/r", "events": ["push"], "agentPolicy": "p",
            "github": {"tokenSecretRef": {"name": "t", "key": "token"}}
        }))
        .unwrap(),
    );
    whc.metadata.namespace = Some("ns".into());
    assert_eq!(
        desired(&whc, Some("https://h.example.com/")).unwrap().url,
        "https://h.example.com/hooks/ns/a"
    );
    assert!(matches!(desired(&whc, None), Err(ConfigError::NoUrl)));
    whc.spec.url = Some("https://mine.example.com/x".into());
    assert_eq!(desired(&whc, None).unwrap().url, "https://mine.example.com/x");
}
