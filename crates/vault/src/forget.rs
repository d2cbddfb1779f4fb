//! `forget`: which snapshots a retention policy keeps (restic's `--keep-*` rules, per chain),
//! and removing the others. The newest snapshot of every chain is always kept: it is what
//! rollback detection measures against. Space is freed by `prune`.

use std::collections::{BTreeMap, HashSet};

use crate::id::Id;
use crate::repo::Repository;
use crate::snapshot::Snapshot;
use crate::storage::Kind;
use crate::{Error, Result};

/// A retention policy (each count keeps the newest snapshot of that many distinct periods).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    /// The newest N.
    pub last: u32,
    /// One per hour, for N hours that have one.
    pub hourly: u32,
    /// One per day.
    pub daily: u32,
    /// One per (ISO) week.
    pub weekly: u32,
    /// One per month.
    pub monthly: u32,
    /// One per year.
    pub yearly: u32,
    /// Everything newer than this many milliseconds before the newest of its chain.
    pub within_ms: Option<i64>,
}

impl KeepPolicy {
    /// True when nothing would be kept but each chain's newest.
    pub fn is_empty(&self) -> bool {
        self == &KeepPolicy::default()
    }
}

/// One snapshot's fate.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Decision {
    /// The snapshot.
    pub id: Id,
    /// Its chain.
    pub chain: String,
    /// When it was made, Unix milliseconds.
    pub time_ms: i64,
    /// Why it is kept (`last`, `daily`, …); empty when it is removed.
    pub reasons: Vec<&'static str>,
}

/// Days since 1970-01-01 → (year, month).
fn year_month(days: i64) -> (i64, u32) {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

/// Decides, for every snapshot, keep (with reasons) or remove.
pub fn plan(snapshots: &[(Id, Snapshot)], policy: &KeepPolicy) -> Vec<Decision> {
    let mut chains: BTreeMap<&str, Vec<&(Id, Snapshot)>> = BTreeMap::new();
    for s in snapshots {
        chains.entry(&s.1.chain).or_default().push(s);
    }
    let mut out = Vec::new();
    for (_, mut list) in chains {
        // Newest first.
        list.sort_by_key(|s| std::cmp::Reverse((s.1.seq, s.1.time_ms, s.0)));
        let newest = list[0].1.time_ms;
        type Bucket = fn(i64) -> i64;
        let rules: [(&'static str, u32, Bucket); 6] = [
            ("last", policy.last, |t| t),
            ("hourly", policy.hourly, |t| t.div_euclid(3_600_000)),
            ("daily", policy.daily, |t| t.div_euclid(86_400_000)),
            ("weekly", policy.weekly, |t| {
                (t.div_euclid(86_400_000) + 3).div_euclid(7)
            }),
            ("monthly", policy.monthly, |t| {
                let (y, m) = year_month(t.div_euclid(86_400_000));
                y * 12 + m as i64
            }),
            ("yearly", policy.yearly, |t| {
                year_month(t.div_euclid(86_400_000)).0
            }),
        ];
        let mut reasons: Vec<Vec<&'static str>> = vec![Vec::new(); list.len()];
        reasons[0].push("newest");
        for (name, count, bucket) in rules {
            let mut seen = HashSet::new();
            for (i, s) in list.iter().enumerate() {
                if seen.len() as u32 >= count {
                    break;
                }
                if seen.insert(if name == "last" {
                    i as i64
                } else {
                    bucket(s.1.time_ms)
                }) {
                    reasons[i].push(name);
                }
            }
        }
        if let Some(w) = policy.within_ms {
            for (i, s) in list.iter().enumerate() {
                if newest - s.1.time_ms <= w {
                    reasons[i].push("within");
                }
            }
        }
        for (s, r) in list.into_iter().zip(reasons) {
            out.push(Decision {
                id: s.0,
                chain: s.1.chain.clone(),
                time_ms: s.1.time_ms,
                reasons: r,
            });
        }
    }
    out.sort_by(|a, b| (&a.chain, a.time_ms, a.id).cmp(&(&b.chain, b.time_ms, b.id)));
    out
}

/// Applies `policy`: removes the snapshots it does not keep (unless `dry_run`).
pub fn forget(repo: &Repository, policy: &KeepPolicy, dry_run: bool) -> Result<Vec<Decision>> {
    if policy.is_empty() {
        return Err(Error::Invalid(
            "forget needs a policy (--keep-last, --keep-daily, …): without one it would remove \
             every snapshot but the newest of each chain"
                .into(),
        ));
    }
    let decisions = plan(&repo.snapshots()?, policy);
    if !dry_run {
        for d in decisions.iter().filter(|d| d.reasons.is_empty()) {
            repo.storage().delete(Kind::Snapshots, &d.id.to_hex())?;
        }
    }
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Summary;

    fn s(chain: &str, seq: u64, time_ms: i64) -> (Id, Snapshot) {
        (
            Id([seq as u8; 32]),
            Snapshot {
                version: 1,
                time_ms,
                chain: chain.into(),
                parent: None,
                seq,
                host: String::new(),
                tags: BTreeMap::new(),
                tree: vec![],
                summary: Summary::default(),
            },
        )
    }

    #[test]
    fn policies_keep_what_they_say() {
        let day = 86_400_000;
        // Two a day for five days.
        let snaps: Vec<_> = (0..10)
            .map(|i| {
                s(
                    "A",
                    i,
                    1_700_000_000_000 + (i as i64 / 2) * day + (i as i64 % 2) * 3_600_000,
                )
            })
            .collect();
        let kept = |p: KeepPolicy| -> usize {
            plan(&snaps, &p)
                .iter()
                .filter(|d| !d.reasons.is_empty())
                .count()
        };
        assert_eq!(
            kept(KeepPolicy {
                last: 3,
                ..Default::default()
            }),
            3
        );
        assert_eq!(
            kept(KeepPolicy {
                daily: 3,
                ..Default::default()
            }),
            3
        );
        assert_eq!(
            kept(KeepPolicy {
                daily: 100,
                ..Default::default()
            }),
            5
        );
        assert_eq!(
            kept(KeepPolicy {
                last: 1,
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            kept(KeepPolicy {
                within_ms: Some(day),
                ..Default::default()
            }),
            3
        );
        // The newest is kept whatever the policy.
        let p = plan(
            &snaps,
            &KeepPolicy {
                yearly: 0,
                ..Default::default()
            },
        );
        assert_eq!(p.iter().filter(|d| !d.reasons.is_empty()).count(), 1);
        assert_eq!(year_month(0), (1970, 1));
        assert_eq!(year_month(19_723), (2024, 1)); // 2024-01-01
        assert_eq!(year_month(19_782), (2024, 2)); // 2024-02-29
    }
}
