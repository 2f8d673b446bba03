//! Tests of [`super`].

use super::*;

fn entry(repository: &str, id: Option<i64>, state: State) -> RepositoryHook {
    RepositoryHook { repository: repository.into(), hook_id: id, state, ..Default::default() }
}

fn listed(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

fn view(entries: &[RepositoryHook]) -> Vec<(&str, Option<i64>, State)> {
    entries.iter().map(|e| (e.repository.as_str(), e.hook_id, e.state)).collect()
}

#[test]
fn the_list_against_the_entries() {
    use State::*;
    let recorded = vec![
        entry("o/a", Some(1), Registered),
        entry("o/b", Some(2), Failed),
        entry("o/c", None, Failed),
        entry("o/d", Some(4), Deleting),
    ];
    let cases = [
        (
            "new ones registering, kept ones as they were, in the list's order",
            listed(&["o/b", "o/a", "o/new"]),
            vec![
                ("o/b", Some(2), Failed),
                ("o/a", Some(1), Registered),
                ("o/new", None, Registering),
                ("o/d", Some(4), Deleting),
            ],
        ),
        (
            "unlisted: deleting when it has a hook, dropped when not",
            listed(&["o/a"]),
            vec![("o/a", Some(1), Registered), ("o/b", Some(2), Deleting), ("o/d", Some(4), Deleting)],
        ),
        (
            "listed again while being deleted: registering again",
            listed(&["o/a", "o/b", "o/c", "o/d"]),
            vec![
                ("o/a", Some(1), Registered),
                ("o/b", Some(2), Failed),
                ("o/c", None, Failed),
                ("o/d", Some(4), Registering),
            ],
        ),
        (
            "another case is the same repository: the hook stays, named as listed",
            listed(&["O/A", "o/b", "o/c"]),
            vec![
                ("O/A", Some(1), Registered),
                ("o/b", Some(2), Failed),
                ("o/c", None, Failed),
                ("o/d", Some(4), Deleting),
            ],
        ),
    ];
    for (what, list, want) in cases {
        assert_eq!(view(&entries(&list, recorded.clone())), want, "{what}");
    }
}

#[test]
fn a_hook_a_listed_entry_holds_is_never_deleted() {
    // Renamed in case while an entry of the old spelling was kept: both
    // hold hook 7 (adopted by its URL); the unlisted one just goes.
    let recorded = vec![entry("o/a", Some(7), State::Registered), entry("O/a2", Some(7), State::Registered)];
    let out = entries(&listed(&["o/a"]), recorded);
    assert_eq!(view(&out), vec![("o/a", Some(7), State::Registered)]);
}

#[test]
fn each_hook_keeps_its_key_while_the_secret_has_it() {
    let keys = [HmacKey::new("100", "a"), HmacKey::new("200", "b")];
    let signing = &keys[0];
    let cases = [
        ("new hook: the WebhookConfig's key, not the newest", None, ("100", true)),
        ("switched already (a rotation cut short): kept", Some("200"), ("200", false)),
        ("its key left the Secret: the WebhookConfig's", Some("50"), ("100", true)),
    ];
    for (what, recorded, want) in cases {
        let (key, switch) = key_for(&keys, recorded, signing);
        assert_eq!((key.version(), switch), want, "{what}");
    }
}

#[test]
fn ready_only_when_every_listed_repository_is() {
    use State::*;
    let failed = RepositoryHook { message: Some("GitHub said 422".into()), ..entry("o/b", None, Failed) };
    let cases = [
        (vec![entry("o/a", Some(1), Registered)], (true, "Ready")),
        (vec![entry("o/a", Some(1), Registered), entry("o/b", None, Registering)], (false, "Registering")),
        (vec![entry("o/a", Some(1), Registered), failed.clone()], (false, "RepositoriesFailed")),
        (vec![entry("o/a", Some(1), Registered), entry("o/x", Some(9), Deleting)], (true, "Ready")),
    ];
    for (entries, want) in cases {
        let (ok, reason, _) = summary(&entries);
        assert_eq!((ok, reason), want, "{:?}", view(&entries));
    }
    let (_, _, message) = summary(&[entry("o/a", Some(1), Registered), failed]);
    assert_eq!(message, "1 of 2 repositories failed, first o/b: GitHub said 422");
}
