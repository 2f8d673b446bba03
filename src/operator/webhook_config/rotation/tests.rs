//! Tests of [`super`].

use super::*;

const NOW: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

fn facts<'a>(versions: &[&'a str], signing: &'a str, confirmed: bool) -> Facts<'a> {
    Facts {
        now: NOW,
        versions: versions.to_vec(),
        signing,
        confirmed,
        switched: NOW - 60,
        asked: false,
        interval_secs: 30 * DAY,
        overlap_secs: 3600,
    }
}

#[test]
fn the_next_step() {
    let fresh = (NOW - DAY).to_string();
    let old = (NOW - 31 * DAY).to_string();
    let older = (NOW - 62 * DAY).to_string();
    let next = (NOW - 10).to_string();
    let now = NOW.to_string();
    let in_sync = |drop: &[&str], overlap_until, next| Step::InSync {
        drop: drop.iter().map(|v| (*v).to_owned()).collect(),
        overlap_until,
        next,
    };
    let cases = [
        (
            "young key, alone: in sync until due",
            facts(&[&fresh], &fresh, true),
            in_sync(&[], None, NOW - DAY + 30 * DAY),
        ),
        ("due by age: start", facts(&[&old], &old, true), Step::Start { version: NOW, asked: false }),
        (
            "asked by annotation: start at once",
            Facts { asked: true, ..facts(&[&fresh], &fresh, true) },
            Step::Start { version: NOW, asked: true },
        ),
        (
            "asked twice within a second: the new version still sorts after",
            Facts { asked: true, ..facts(&[&now], &now, true) },
            Step::Start { version: NOW + 1, asked: true },
        ),
        (
            "a newer key in the Secret: switch to it",
            facts(&[&old, &next], &old, true),
            Step::Switch { to: next.clone() },
        ),
        (
            "asked while switching: still the switch",
            Facts { asked: true, ..facts(&[&old, &next], &old, true) },
            Step::Switch { to: next.clone() },
        ),
        ("switched, not confirmed: await the ping", facts(&[&old, &next], &next, false), Step::AwaitPing),
        ("due by age but unconfirmed: the ping first", facts(&[&old], &old, false), Step::AwaitPing),
        (
            "confirmed within the overlap: keep the old key",
            facts(&[&old, &next], &next, true),
            in_sync(&[], Some(NOW - 60 + 3600), NOW - 60 + 3600),
        ),
        (
            "overlap over: drop every older key",
            Facts { switched: NOW - 3600, ..facts(&[&older, &old, &next], &next, true) },
            in_sync(&[&older, &old], None, NOW - 10 + 30 * DAY),
        ),
    ];
    for (what, facts, want) in cases {
        assert_eq!(step(&facts), want, "{what}");
    }
}

fn ping(id: i64, code: i64, secs: i64) -> Delivery {
    Delivery {
        id,
        guid: format!("g{id}"),
        delivered_at: Timestamp::from_second(secs).unwrap().to_string(),
        redelivery: false,
        status_code: code,
        event: "ping".into(),
    }
}

#[test]
fn a_ping_confirms_the_switch() {
    let switched = NOW - 30;
    let push = Delivery { event: "push".into(), ..ping(9, 200, NOW - 1) };
    // Ok(the confirming ping's id), or Err((last status, ask again)).
    let seen = |p: Ping| match p {
        Ping::Confirmed(d) => Ok(d.id),
        Ping::Waiting { last, again } => Err((last, again)),
    };
    let cases = [
        ("nothing yet, just switched", vec![], NOW - 25, Err((None, false))),
        ("nothing for 10 s: ask again", vec![], NOW - 20, Err((None, true))),
        ("a push is no confirmation", vec![push], NOW, Err((None, true))),
        (
            "a ping in the switch's second does not count",
            vec![ping(5, 200, switched)],
            NOW,
            Err((None, true)),
        ),
        (
            "the last ping failed 5 s ago: wait",
            vec![ping(6, 401, NOW - 5), ping(5, 401, NOW - 20)],
            NOW,
            Err((Some(401), false)),
        ),
        (
            "an earlier ping after the switch succeeded",
            vec![ping(6, 502, NOW - 5), ping(5, 200, NOW - 20)],
            NOW,
            Ok(5),
        ),
    ];
    for (what, deliveries, now, want) in cases {
        assert_eq!(seen(ping_outcome(&deliveries, switched, now)), want, "{what}");
    }
}
