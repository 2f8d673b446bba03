//! The webhook events GitHub can deliver, as accepted in `events` lists.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Every event a repository or organization webhook can subscribe to, taken
/// from GitHub's published webhook descriptions (`@octokit/openapi-webhooks`).
/// `ping` is absent on purpose: GitHub sends it on its own, it cannot be
/// subscribed to.
pub const GITHUB_EVENTS: &[&str] = &[
    "branch_protection_configuration",
    "branch_protection_rule",
    "check_run",
    "check_suite",
    "code_scanning_alert",
    "commit_comment",
    "create",
    "custom_property",
    "custom_property_values",
    "delete",
    "dependabot_alert",
    "deploy_key",
    "deployment",
    "deployment_protection_rule",
    "deployment_review",
    "deployment_status",
    "discussion",
    "discussion_comment",
    "fork",
    "github_app_authorization",
    "gollum",
    "installation",
    "installation_repositories",
    "installation_target",
    "issue_comment",
    "issue_dependencies",
    "issues",
    "label",
    "marketplace_purchase",
    "member",
    "membership",
    "merge_group",
    "meta",
    "milestone",
    "org_block",
    "organization",
    "package",
    "page_build",
    "personal_access_token_request",
    "project",
    "project_card",
    "project_column",
    "projects_v2",
    "projects_v2_item",
    "projects_v2_status_update",
    "public",
    "pull_request",
    "pull_request_review",
    "pull_request_review_comment",
    "pull_request_review_thread",
    "push",
    "registry_package",
    "release",
    "repository",
    "repository_advisory",
    "repository_dispatch",
    "repository_import",
    "repository_ruleset",
    "repository_vulnerability_alert",
    "secret_scanning_alert",
    "secret_scanning_alert_location",
    "secret_scanning_scan",
    "security_advisory",
    "security_and_analysis",
    "sponsorship",
    "star",
    "status",
    "sub_issues",
    "team",
    "team_add",
    "watch",
    "workflow_dispatch",
    "workflow_job",
    "workflow_run",
];

/// Schema for a set of event names: each one of [`GITHUB_EVENTS`] or `*`.
pub(crate) fn event_list(_: &mut SchemaGenerator) -> Schema {
    let mut allowed: Vec<&str> = vec!["*"];
    allowed.extend_from_slice(GITHUB_EVENTS);
    json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "set",
        "maxItems": GITHUB_EVENTS.len() + 1,
        "items": { "type": "string", "enum": allowed },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_sorted_unique_and_snake_case() {
        let mut sorted = GITHUB_EVENTS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, GITHUB_EVENTS, "keep the list sorted and free of duplicates");
        for event in GITHUB_EVENTS {
            assert!(
                event.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()),
                "{event} is not how GitHub spells an event in X-GitHub-Event"
            );
        }
    }
}
