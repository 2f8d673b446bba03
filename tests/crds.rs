//! The CRDs against a real kube-apiserver: they install, explain themselves,
//! accept the samples, reject bad input with the schema's own message, guard
//! status behind the subresource, and take part in garbage collection.
//!
//! Over 400 lines: one suite per area, each test a scenario a user runs, with the world it needs.

mod common;

use std::time::Duration;

use common::{TestEnv, TestNamespace, eventually, merge};
use hookwarden::api::{AgentPolicy, ContentType, WebhookConfig, WebhookConfigSpec};
use k8s_openapi::{
    api::core::v1::ConfigMap, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const CRD_NAMES: [&str; 2] = ["webhookconfigs.hookwarden.io", "agentpolicies.hookwarden.io"];

#[tokio::test]
async fn crds_apply_and_become_established() {
    let env = TestEnv::load();
    env.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", "crds/"]);
    let crds: Api<CustomResourceDefinition> = Api::all(env.client().await);
    for name in CRD_NAMES {
        let crd = eventually(&format!("{name} Established"), Duration::from_secs(30), || async {
            let crd = crds.get(name).await.ok()?;
            let established = crd
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(crd)
        })
        .await;
        assert_eq!(crd.spec.names.categories.as_deref(), Some(&["hookwarden".to_owned()][..]));
        let version = &crd.spec.versions[0];
        assert!(
            version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(),
            "{name} has a status subresource"
        );
    }
    let out = env.kubectl_ok(&["get", "crd", CRD_NAMES[0], CRD_NAMES[1]]);
    assert!(out.contains(CRD_NAMES[0]) && out.contains(CRD_NAMES[1]), "{out}");
}

#[tokio::test]
async fn kubectl_explain_shows_field_descriptions() {
    let env = TestEnv::load();
    let cases = [
        ("whc.spec.secretRotation", &["Time between rotations", "interval", "overlap", "1h30m"][..]),
        ("whc.spec.repository", &["owner/name", "Exactly one of"]),
        ("whc.spec.github.app.privateKeySecretRef", &["PEM-encoded RSA private key"]),
        ("whc.status.hookId", &["GitHub's ID of the registered hook"]),
        ("ap.spec.enabled", &["kill switch", "dispatch nothing"]),
        ("ap.spec.circuitBreaker.errorThresholdPercent", &["Percentage of failed calls"]),
        ("ap.spec.retry.strategy", &["exponential", "fibonacci"]),
        ("ap.status", &["effective settings receivers obey"]),
    ];
    // NB: a CRD is Established a moment before discovery and OpenAPI publish it.
    eventually("kubectl to discover the CRDs", Duration::from_secs(30), || async {
        let seen = ["whc.spec", "ap.spec"].iter().all(|r| env.kubectl(&["explain", r]).status.success());
        seen.then_some(())
    })
    .await;
    for (path, wanted) in cases {
        let out = env.kubectl_ok(&["explain", path]);
        for text in wanted {
            assert!(out.contains(text), "`kubectl explain {path}` lacks {text:?}:\n{out}");
        }
    }
}

#[tokio::test]
async fn samples_are_accepted_with_defaults_applied() {
    let env = TestEnv::load();
    let ns = TestNamespace::create(&env).await;
    env.kubectl_ok(&["apply", "-n", &ns.name, "-f", "manifests/samples/"]);

    let client = env.client().await;
    let whc: Api<WebhookConfig> = Api::namespaced(client.clone(), &ns.name);
    let org = whc.get("octo-org").await.expect("organization sample stored");
    // Fields the sample leaves out come back with the schema's defaults.
    assert_eq!(org.spec.content_type, ContentType::Json);
    assert!(org.spec.active);
    assert_eq!(org.spec.agent_policy, "default");
    assert_eq!(org.spec.secret_rotation.interval.to_string(), "720h");
    assert_eq!(org.spec.secret_rotation.overlap.get(), Duration::from_secs(600));
    let repo = whc.get("hello-world").await.expect("repository sample stored");
    assert_eq!(repo.spec.github.api_url, "https://api.github.com");
    let many = whc.get("payments").await.expect("repositories sample stored");
    assert_eq!(many.spec.repositories.as_ref().map(Vec::len), Some(3));

    // The cluster-scoped sample: stored with its defaults, then removed (it
    // is the cluster's, not the test namespace's).
    let apps: Api<hookwarden::api::AppWebhook> = Api::all(client.clone());
    let app = apps.get("acme-app").await.expect("AppWebhook sample stored");
    assert_eq!((app.spec.connection.as_str(), app.spec.url.as_deref()), ("acme", None));
    env.kubectl_ok(&["delete", "appwebhook", "acme-app"]);

    let policy = Api::<AgentPolicy>::namespaced(client, &ns.name).get("default").await.unwrap();
    assert_eq!(policy.spec.agents[0].name, "reviewer");
    let rate = policy.spec.agents[0].rate_limit.clone().expect("the sample's rate limit");
    assert_eq!((rate.requests_per_unit, rate.unit, rate.burst), (10, hookwarden::api::RateUnit::Second, 20));
    assert_eq!(policy.spec.agents[0].concurrency, Some(4));
    assert_eq!(policy.spec.retry.max_delay.get(), Duration::from_secs(300));

    let table = env.kubectl_ok(&["get", "whc", "-n", &ns.name]);
    for column in ["NAME", "REPOSITORY", "ORGANIZATION", "HOOK ID", "READY", "AGE", "octo-org/hello-world"] {
        assert!(table.contains(column), "`kubectl get whc` lacks {column}:\n{table}");
    }
    let table = env.kubectl_ok(&["get", "ap", "-n", &ns.name]);
    for column in ["ENABLED", "CONCURRENCY", "READY"] {
        assert!(table.contains(column), "`kubectl get ap` lacks {column}:\n{table}");
    }
    let all = env.kubectl_ok(&["get", "hookwarden", "-n", &ns.name, "-o", "name"]);
    assert_eq!(all.lines().count(), 4, "the hookwarden category lists both kinds:\n{all}");
}

fn valid_webhook_config() -> Value {
    json!({
        "apiVersion": "hookwarden.io/v1alpha1",
        "kind": "WebhookConfig",
        "metadata": { "name": "x" },
        "spec": {
            "repository": "octo-org/hello-world",
            "events": ["push"],
            "github": { "tokenSecretRef": { "name": "github-token", "key": "token" } }
        }
    })
}

fn valid_agent_policy() -> Value {
    json!({
        "apiVersion": "hookwarden.io/v1alpha1",
        "kind": "AgentPolicy",
        "metadata": { "name": "x" },
        "spec": {
            "concurrency": 2,
            "agents": [{ "name": "a", "url": "http://agent.example:8080/" }]
        }
    })
}

#[tokio::test]
async fn invalid_resources_are_rejected_with_the_schemas_message() {
    let env = TestEnv::load();
    let ns = TestNamespace::create(&env).await;
    let client = env.client().await;
    let whc = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        &ns.name,
        &ApiResource::erase::<WebhookConfig>(&()),
    );
    let ap = Api::<DynamicObject>::namespaced_with(client, &ns.name, &ApiResource::erase::<AgentPolicy>(&()));

    // (what is wrong, which kind, merge patch on a valid object, text the error must contain)
    let cases: Vec<(&str, &Api<DynamicObject>, Value, &[&str])> = vec![
        (
            "repository without owner",
            &whc,
            json!({"spec": {"repository": "hello-world"}}),
            &["spec.repository", "should match"],
        ),
        (
            "repository with a space",
            &whc,
            json!({"spec": {"repository": "octo org/x"}}),
            &["spec.repository", "should match"],
        ),
        (
            "owner starting with a hyphen",
            &whc,
            json!({"spec": {"repository": "-octo/x"}}),
            &["spec.repository", "should match"],
        ),
        (
            "both repository and organization",
            &whc,
            json!({"spec": {"organization": "octo-org"}}),
            &["exactly one of repository, organization or repositories must be set"],
        ),
        (
            "neither repository nor organization",
            &whc,
            json!({"spec": {"repository": null}}),
            &["exactly one of repository, organization or repositories must be set"],
        ),
        (
            "repository and repositories",
            &whc,
            json!({"spec": {"repositories": ["octo-org/a"]}}),
            &["exactly one of repository, organization or repositories must be set"],
        ),
        (
            "an empty list of repositories",
            &whc,
            json!({"spec": {"repository": null, "repositories": []}}),
            &["spec.repositories", "should have at least 1 items"],
        ),
        (
            "a listed repository without owner",
            &whc,
            json!({"spec": {"repository": null, "repositories": ["octo-org/a", "b"]}}),
            &["spec.repositories[1]", "should match"],
        ),
        (
            "a repository listed twice",
            &whc,
            json!({"spec": {"repository": null, "repositories": ["octo-org/a", "octo-org/a"]}}),
            &["spec.repositories[1]", "Duplicate value"],
        ),
        (
            "unknown event",
            &whc,
            json!({"spec": {"events": ["push", "pushh"]}}),
            &["spec.events[1]", "Unsupported value: \"pushh\""],
        ),
        (
            "ping is sent, not subscribed",
            &whc,
            json!({"spec": {"events": ["ping"]}}),
            &["spec.events[0]", "Unsupported value: \"ping\""],
        ),
        (
            "'*' next to other events",
            &whc,
            json!({"spec": {"events": ["*", "push"]}}),
            &["'*' already means every event; list it alone"],
        ),
        (
            "no events",
            &whc,
            json!({"spec": {"events": []}}),
            &["spec.events", "should have at least 1 items"],
        ),
        (
            "duplicate events",
            &whc,
            json!({"spec": {"events": ["push", "push"]}}),
            &["spec.events[1]", "Duplicate value"],
        ),
        (
            "unknown content type",
            &whc,
            json!({"spec": {"contentType": "xml"}}),
            &["spec.contentType", "Unsupported value: \"xml\""],
        ),
        (
            "url that is not http(s)",
            &whc,
            json!({"spec": {"url": "ftp://example.com/hook"}}),
            &["spec.url", "should match"],
        ),
        ("no github section", &whc, json!({"spec": {"github": null}}), &["spec.github", "Required value"]),
        (
            "token and app at once",
            &whc,
            json!({"spec": {"github": {"app": {"appId": 1, "installationId": 2,
                "privateKeySecretRef": {"name": "k", "key": "pem"}}}}}),
            &["exactly one of tokenSecretRef, app or connection must be set"],
        ),
        (
            "app id zero",
            &whc,
            json!({"spec": {"github": {"tokenSecretRef": null, "app": {"appId": 0, "installationId": 2,
                "privateKeySecretRef": {"name": "k", "key": "pem"}}}}}),
            &["spec.github.app.appId", "greater than or equal to 1"],
        ),
        (
            "duration in days",
            &whc,
            json!({"spec": {"secretRotation": {"interval": "30d"}}}),
            &["spec.secretRotation.interval", "should match"],
        ),
        (
            "negative duration",
            &whc,
            json!({"spec": {"secretRotation": {"overlap": "-5m"}}}),
            &["spec.secretRotation.overlap", "should match"],
        ),
        (
            "overlap not shorter than interval",
            &whc,
            json!({"spec": {"secretRotation": {"interval": "1h", "overlap": "1h"}}}),
            &["overlap must be shorter than interval"],
        ),
        (
            "rotation every second",
            &whc,
            json!({"spec": {"secretRotation": {"interval": "1s", "overlap": "0s"}}}),
            &["interval must be at least 1m"],
        ),
        (
            "secret name with upper case",
            &whc,
            json!({"spec": {"secretName": "My-Secret"}}),
            &["spec.secretName", "should match"],
        ),
        (
            "concurrency 0",
            &ap,
            json!({"spec": {"concurrency": 0}}),
            &["spec.concurrency", "greater than or equal to 1"],
        ),
        (
            "concurrency too high",
            &ap,
            json!({"spec": {"concurrency": 100000}}),
            &["spec.concurrency", "less than or equal to 256"],
        ),
        (
            "queue limit 0",
            &ap,
            json!({"spec": {"queueLimit": 0}}),
            &["spec.queueLimit", "greater than or equal to 1"],
        ),
        ("history over a week", &ap, json!({"spec": {"history": "200h"}}), &["history is kept at most 168h"]),
        (
            "an agent's rate of nothing",
            &ap,
            json!({"spec": {"agents": [{"name": "a", "url": "http://a/", "rateLimit": {"requestsPerUnit": 0}}]}}),
            &["spec.agents[0].rateLimit.requestsPerUnit", "greater than or equal to 1"],
        ),
        (
            "an agent's rate in hours",
            &ap,
            json!({"spec": {"agents": [{"name": "a", "url": "http://a/", "rateLimit": {"requestsPerUnit": 1, "unit": "Hour"}}]}}),
            &["spec.agents[0].rateLimit.unit", "Unsupported value: \"Hour\""],
        ),
        (
            "negative timeout",
            &ap,
            json!({"spec": {"agents": [{"name": "a", "url": "http://a/", "timeoutSeconds": -1}]}}),
            &["spec.agents[0].timeoutSeconds", "greater than or equal to 1"],
        ),
        (
            "agent without url",
            &ap,
            json!({"spec": {"agents": [{"name": "a"}]}}),
            &["spec.agents[0].url", "Required value"],
        ),
        (
            "agent name with upper case",
            &ap,
            json!({"spec": {"agents": [{"name": "Reviewer", "url": "http://a/"}]}}),
            &["spec.agents[0].name", "should match"],
        ),
        (
            "two agents with one name",
            &ap,
            json!({"spec": {"agents": [{"name": "a", "url": "http://a/"}, {"name": "a", "url": "http://b/"}]}}),
            &["spec.agents[1]", "Duplicate value"],
        ),
        (
            "agent repository filter not owner/name",
            &ap,
            json!({"spec": {"agents": [{"name": "a", "url": "http://a/", "repositories": ["*"]}]}}),
            &["spec.agents[0].repositories[0]", "should match"],
        ),
        (
            "agent event filter unknown",
            &ap,
            json!({"spec": {"agents": [{"name": "a", "url": "http://a/", "events": ["pull-request"]}]}}),
            &["spec.agents[0].events[0]", "Unsupported value"],
        ),
        (
            "error threshold over 100 %",
            &ap,
            json!({"spec": {"circuitBreaker": {"errorThresholdPercent": 101}}}),
            &["spec.circuitBreaker.errorThresholdPercent", "less than or equal to 100"],
        ),
        (
            "zero reset timeout",
            &ap,
            json!({"spec": {"circuitBreaker": {"resetTimeoutSeconds": 0}}}),
            &["spec.circuitBreaker.resetTimeoutSeconds", "greater than or equal to 1"],
        ),
        (
            "unknown retry strategy",
            &ap,
            json!({"spec": {"retry": {"strategy": "random"}}}),
            &["spec.retry.strategy", "Unsupported value: \"random\""],
        ),
        (
            "zero attempts",
            &ap,
            json!({"spec": {"retry": {"maxAttempts": 0}}}),
            &["spec.retry.maxAttempts", "greater than or equal to 1"],
        ),
        (
            "initial delay above max delay",
            &ap,
            json!({"spec": {"retry": {"initialDelay": "10m", "maxDelay": "1m"}}}),
            &["initialDelay must not exceed maxDelay"],
        ),
        (
            "an App webhook asked for no repository",
            &ap,
            json!({"spec": {"appWebhooks": [{"name": "acme-app", "repositories": []}]}}),
            &["spec.appWebhooks[0].repositories", "at least 1"],
        ),
        (
            "an App webhook's repository with a space",
            &ap,
            json!({"spec": {"appWebhooks": [{"name": "acme-app", "repositories": ["acme/a b"]}]}}),
            &["spec.appWebhooks[0].repositories[0]", "should match"],
        ),
    ];

    let mut failures = Vec::new();
    for (i, (what, api, patch, wanted)) in cases.iter().enumerate() {
        let mut body = if std::ptr::eq(*api, &whc) { valid_webhook_config() } else { valid_agent_policy() };
        merge(&mut body, patch);
        body["metadata"]["name"] = json!(format!("case-{i}"));
        let obj: DynamicObject = serde_json::from_value(body).unwrap();
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(kube::Error::Api(status)) => {
                let missing: Vec<_> = wanted.iter().filter(|w| !status.message.contains(*w)).collect();
                if status.code != 422 || !missing.is_empty() {
                    failures.push(format!(
                        "{what}: HTTP {} {:?}, lacks {missing:?}",
                        status.code, status.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{what}: unexpected error {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) not rejected as expected:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The valid bases themselves are accepted, so every rejection above is
    // down to its patch.
    for (api, body) in [(&whc, valid_webhook_config()), (&ap, valid_agent_policy())] {
        let obj: DynamicObject = serde_json::from_value(body).unwrap();
        api.create(&PostParams::default(), &obj).await.expect("valid base accepted");
    }

    // Edits: a list of repositories stays a list, on the same GitHub; its
    // members change freely.
    let mut fleet = valid_webhook_config();
    merge(
        &mut fleet,
        &json!({"metadata": {"name": "fleet"}, "spec": {"repository": null, "repositories": ["octo-org/a", "octo-org/b"]}}),
    );
    whc.create(&PostParams::default(), &serde_json::from_value(fleet).unwrap())
        .await
        .expect("a list accepted");
    let edits: Vec<(&str, &str, Value, Option<&str>)> = vec![
        (
            "one repository becomes a list",
            "x",
            json!({"spec": {"repository": null, "repositories": ["octo-org/a"]}}),
            Some("repositories cannot be added to or removed from"),
        ),
        (
            "a list becomes one repository",
            "fleet",
            json!({"spec": {"repositories": null, "repository": "octo-org/a"}}),
            Some("repositories cannot be added to or removed from"),
        ),
        (
            "a list moves to another GitHub",
            "fleet",
            json!({"spec": {"github": {"apiUrl": "https://ghe.example.com/api/v3"}}}),
            Some("keeps its GitHub API URL and connection"),
        ),
        (
            "a list grows and shrinks",
            "fleet",
            json!({"spec": {"repositories": ["octo-org/b", "octo-org/c"]}}),
            None,
        ),
    ];
    for (what, name, patch, refused) in edits {
        let result = whc.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await;
        match (result, refused) {
            (Ok(_), None) => {}
            (Err(kube::Error::Api(status)), Some(wanted)) if status.message.contains(wanted) => {}
            (other, _) => panic!("{what}: {:?}", other.map(|_| "accepted")),
        }
    }
}

fn sample_spec() -> WebhookConfigSpec {
    serde_json::from_value(valid_webhook_config()["spec"].clone()).unwrap()
}

#[tokio::test]
async fn status_is_written_only_through_the_status_subresource() {
    let env = TestEnv::load();
    let ns = TestNamespace::create(&env).await;
    let api: Api<WebhookConfig> = Api::namespaced(env.client().await, &ns.name);
    let created =
        api.create(&PostParams::default(), &WebhookConfig::new("status", sample_spec())).await.unwrap();

    // A write to the main resource drops status changes.
    let mut with_status = created.clone();
    with_status.status = Some(serde_json::from_value(json!({"hookId": 42})).unwrap());
    let replaced = api.replace("status", &PostParams::default(), &with_status).await.unwrap();
    assert_eq!(replaced.status, None, "main resource must not accept status");
    assert_eq!(api.get("status").await.unwrap().status, None);

    // The status subresource stores status, and ignores spec changes.
    let patch = json!({"status": {"hookId": 42}, "spec": {"repository": "someone/else"}});
    api.patch_status("status", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let stored = api.get("status").await.unwrap();
    assert_eq!(stored.status.and_then(|s| s.hook_id), Some(42));
    assert_eq!(stored.spec.repository.as_deref(), Some("octo-org/hello-world"));
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_what_it_owns() {
    let env = TestEnv::load();
    let ns = TestNamespace::create(&env).await;
    let client = env.client().await;
    let whcs: Api<WebhookConfig> = Api::namespaced(client.clone(), &ns.name);
    let owner =
        whcs.create(&PostParams::default(), &WebhookConfig::new("owner", sample_spec())).await.unwrap();
    let owner_ref = owner.controller_owner_ref(&()).expect("owner reference");

    let cms: Api<ConfigMap> = Api::namespaced(client, &ns.name);
    let mut owned = ConfigMap::default();
    owned.metadata.name = Some("owned".into());
    owned.metadata.owner_references = Some(vec![owner_ref]);
    cms.create(&PostParams::default(), &owned).await.unwrap();
    let mut bystander = ConfigMap::default();
    bystander.metadata.name = Some("bystander".into());
    cms.create(&PostParams::default(), &bystander).await.unwrap();

    whcs.delete(&owner.name_any(), &DeleteParams::background()).await.unwrap();
    eventually("the owned ConfigMap to be collected", Duration::from_secs(60), || async {
        matches!(cms.get("owned").await, Err(kube::Error::Api(s)) if s.code == 404).then_some(())
    })
    .await;
    assert!(cms.get("bystander").await.is_ok(), "an unowned object must survive");
}
