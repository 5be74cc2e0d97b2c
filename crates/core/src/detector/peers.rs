//! Peer groups: who works with whom, read from whose records they open, for an audit trail
//! that names no department.
//!
//! Firely, Medplum and Aidbox write no department on their AuditEvents. Without one, the
//! signals that compare a user's department with the patient's record (a lookup of another
//! department's patient, a crowd from departments with no history with the record, a
//! colleague's record) have nothing to compare, and on the simulated hospitals written as
//! Firely writes them about two in five incidents stayed out of the queue (BENCHMARKS.md,
//! issue #21). The people of a ward open the same patients, week after week; a patient's
//! record is opened by the few teams that treat them. So the users whose events name no
//! department are grouped by the records they share, at training time ([`infer`]), and a
//! group then stands for a department wherever an event names none
//! (`Context::set_peer_groups`): "peer group 3".
//!
//! The grouping: users are joined by the patients they both opened, each patient counting
//! `1 / (its users − 1)` to each pair of its users (a record a crowd opens ties each of
//! them less than one a team of three shares); records opened by more than
//! [`MAX_RECORD_USERS`] users tie no one. The users are then grouped by moving each, in
//! turn, to the group its ties gain the most modularity in, at [`RESOLUTION`], until no one
//! moves (the first phase of the Louvain method). A group of fewer than [`MIN_PEERS`] users
//! is none: pharmacists, radiographers and laboratory staff open the records of every ward
//! and share no ward's patients more than another's, and at this resolution they stay on
//! their own. Their department stays unknown, as it was.
//!
//! The groups are fixed at training and kept with the baselines. A user who first appears
//! later joins the group their work goes to: once they have opened patients
//! `NEWCOMER_OPENS` times, `NEWCOMER_SHARE` of them patients whose record activity comes
//! mostly from one group (`Context::note_newcomer`; the daemon says each join in the
//! journal). A newcomer whose opens spread over every ward, as a service's do, joins none.
//!
//! Measured on five simulated hospitals of different styles (their events' departments
//! put aside, 14 days each), every group of three or more held the users of one
//! department, and no ward was split between groups; at resolution 1 the services joined
//! a ward (purity 0.57–0.90: `crates/lab/quality/peers.py`). The grouping is
//! deterministic: users in the order of their ids, ties to the group met first.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::fhir::AuditRecord;

/// The modularity resolution of the grouping: above 1, a user joins a group only for ties
/// stronger than chance by this factor. At 1.5, 2 and 3 the groups of the simulated
/// hospitals were pure, one per ward; at 1, the services that open every ward's records
/// joined one of them.
pub const RESOLUTION: f64 = 2.0;

/// The fewest users a peer group holds: fewer are no group (their department stays
/// unknown).
pub const MIN_PEERS: usize = 3;

/// A record opened by more users than this (over the training window) ties none of them:
/// it is everyone's patient, or a crowd's, and no sign of a team.
pub const MAX_RECORD_USERS: usize = 200;

/// Sweeps over the users at most (a bound: the grouping ends at the first sweep that moves
/// no one).
pub const MAX_SWEEPS: usize = 50;

/// The peer groups of a site's users, largest first; each group's users by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerGroups {
    pub groups: Vec<Vec<String>>,
    /// Users whose events name no department and who are in no group (fewer than
    /// [`MIN_PEERS`] peers, or no record shared with anyone), by id.
    pub alone: Vec<String>,
    /// Records opened by more than [`MAX_RECORD_USERS`] of these users, which tied no one
    /// (`train` says how many).
    pub crowded_records: usize,
    /// Whether the grouping settled (a sweep moved no one) within [`MAX_SWEEPS`]; if not,
    /// the groups are those of the last sweep (`train` says so).
    pub settled: bool,
}

impl PeerGroups {
    /// Each grouped user with their group's number (1 for the largest).
    pub fn members(&self) -> impl Iterator<Item = (&str, u32)> {
        self.groups
            .iter()
            .zip(1u32..)
            .flat_map(|(g, n)| g.iter().map(move |u| (u.as_str(), n)))
    }

    /// The users in a group.
    pub fn grouped(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }
}

/// The name a peer group stands under as a department (in explanations and on the user
/// card).
pub fn group_name(n: u32) -> String {
    format!("peer group {n}")
}

/// The peer groups of the users whose successful events with a patient name no department
/// in `records` (see the module's documentation); none when every user's events name one.
pub fn infer(records: &[AuditRecord]) -> PeerGroups {
    let named: HashSet<&str> = records
        .iter()
        .filter(|r| r.department.is_some())
        .filter_map(|r| r.user.as_deref())
        .collect();
    // Each record's users, among those with no department.
    let mut by_patient: HashMap<&str, HashSet<&str>> = HashMap::new();
    for r in records.iter().filter(|r| r.outcome == 0) {
        if let (Some(u), Some(p)) = (r.user.as_deref(), r.patient.as_deref()) {
            if !named.contains(u) {
                by_patient.entry(p).or_default().insert(u);
            }
        }
    }
    let users: Vec<&str> = {
        let mut u: Vec<&str> = by_patient.values().flatten().copied().collect();
        u.sort_unstable();
        u.dedup();
        u
    };
    let index: HashMap<&str, usize> = users.iter().enumerate().map(|(i, u)| (*u, i)).collect();
    // Pairs (lower index, higher) packed in a u64, so that a site of thousands of users
    // and a million shared records is counted in seconds.
    let mut ties: HashMap<u64, f64> = HashMap::new();
    // Records in order, so that each tie is summed in the same order on every run.
    let mut records_shared: Vec<(&str, &HashSet<&str>)> =
        by_patient.iter().map(|(p, u)| (*p, u)).collect();
    records_shared.sort_unstable_by_key(|(p, _)| *p);
    let mut crowded_records = 0;
    for (_, sharing) in records_shared {
        let n = sharing.len();
        crowded_records += (n > MAX_RECORD_USERS) as usize;
        if !(2..=MAX_RECORD_USERS).contains(&n) {
            continue;
        }
        let w = 1.0 / (n - 1) as f64;
        let mut ix: Vec<usize> = sharing.iter().map(|u| index[u]).collect();
        ix.sort_unstable();
        for (a, &i) in ix.iter().enumerate() {
            for &j in &ix[a + 1..] {
                *ties.entry(((i as u64) << 32) | j as u64).or_default() += w;
            }
        }
    }
    let mut adjacent: Vec<Vec<(usize, f64)>> = vec![Vec::new(); users.len()];
    for (&pair, &w) in &ties {
        let (i, j) = ((pair >> 32) as usize, (pair & 0xffff_ffff) as usize);
        adjacent[i].push((j, w));
        adjacent[j].push((i, w));
    }
    // In index order, whatever order the pairs came in: the grouping sums ties in it.
    adjacent
        .iter_mut()
        .for_each(|a| a.sort_unstable_by_key(|e| e.0));
    let (group, settled) = local_moving(&adjacent);
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, g) in group.iter().enumerate() {
        members.entry(*g).or_default().push(i);
    }
    let mut groups: Vec<Vec<String>> = members
        .into_values()
        .filter(|m| m.len() >= MIN_PEERS)
        .map(|m| m.into_iter().map(|i| users[i].to_string()).collect())
        .collect();
    // Largest first; among equals, by their first user's id (each group is in id order).
    groups.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a[0].cmp(&b[0])));
    let placed: HashSet<&str> = groups.iter().flatten().map(String::as_str).collect();
    let alone = users
        .iter()
        .filter(|u| !placed.contains(**u))
        .map(|u| u.to_string())
        .collect();
    PeerGroups {
        alone,
        groups,
        crowded_records,
        settled,
    }
}

/// Each node's group after moving nodes, in index order, to the neighbouring group of the
/// largest modularity gain at [`RESOLUTION`] until none moves (or [`MAX_SWEEPS`]); groups
/// are numbered by a node of theirs; and whether a sweep moved no one. `adjacent[i]`: `i`'s
/// neighbours and tie weights, both ways.
fn local_moving(adjacent: &[Vec<(usize, f64)>]) -> (Vec<usize>, bool) {
    let n = adjacent.len();
    let degree: Vec<f64> = adjacent
        .iter()
        .map(|a| a.iter().map(|(_, w)| w).sum())
        .collect();
    let twice_total: f64 = degree.iter().sum();
    let mut group: Vec<usize> = (0..n).collect();
    if twice_total == 0.0 {
        return (group, true);
    }
    let mut group_degree = degree.clone();
    // Ties from the node at hand to each group, and the groups touched (reset per node).
    let mut to_group = vec![0.0f64; n];
    let mut touched: Vec<usize> = Vec::new();
    for _ in 0..MAX_SWEEPS {
        let mut moved = false;
        for i in 0..n {
            for &(j, w) in &adjacent[i] {
                if to_group[group[j]] == 0.0 {
                    touched.push(group[j]);
                }
                to_group[group[j]] += w;
            }
            let own = group[i];
            group_degree[own] -= degree[i];
            let gain =
                |g: usize| to_group[g] - RESOLUTION * group_degree[g] * degree[i] / twice_total;
            let mut best = (own, gain(own));
            touched.sort_unstable();
            for &g in &touched {
                let x = gain(g);
                if x > best.1 + 1e-12 {
                    best = (g, x);
                }
            }
            for g in touched.drain(..) {
                to_group[g] = 0.0;
            }
            group[i] = best.0;
            group_degree[best.0] += degree[i];
            moved |= best.0 != own;
        }
        if !moved {
            return (group, true);
        }
    }
    (group, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::testing::read;

    /// A read of `patient` by `user`, `minute` minutes in, naming no department.
    fn rec(user: &str, patient: &str, minute: i64) -> AuditRecord {
        AuditRecord {
            department: None,
            ..read(user, patient, "10.0.0.1", minute)
        }
    }

    /// Two wards of four, each opening its own patients, and a pharmacist opening every
    /// ward's: two groups, the pharmacist in neither.
    #[test]
    fn wards_are_found_from_the_records_their_people_share() {
        let mut records = Vec::new();
        let mut t = 0;
        for ward in 0..2 {
            for p in 0..12 {
                let patient = format!("Patient/w{ward}-{p}");
                // Three of the ward's four open each patient.
                for u in (0..4).filter(|u| (u + p) % 4 != 0) {
                    t += 1;
                    records.push(rec(&format!("Practitioner/w{ward}-{u}"), &patient, t));
                }
                t += 1;
                records.push(rec("Practitioner/pharm", &patient, t));
            }
        }
        let g = infer(&records);
        assert_eq!(g.groups.len(), 2, "{g:?}");
        assert!(g.settled);
        assert_eq!(g.crowded_records, 0);
        for (n, ward) in g.groups.iter().enumerate() {
            let first = &ward[0][..ward[0].len() - 1];
            assert!(
                ward.iter().all(|u| u.starts_with(first)),
                "group {n}: {ward:?}"
            );
            assert_eq!(ward.len(), 4);
        }
        assert_eq!(g.alone, ["Practitioner/pharm"]);
        assert!(g.members().all(|(u, _)| u != "Practitioner/pharm"));
    }

    /// Users whose events name a department are not grouped; refused events and events
    /// without a patient tie no one.
    #[test]
    fn only_users_without_a_department_are_grouped() {
        let mut records = Vec::new();
        for p in 0..6 {
            for u in 0..3 {
                let mut r = rec(&format!("Practitioner/{u}"), &format!("Patient/{p}"), p);
                r.department = (u == 0).then(|| "Surgery".to_string());
                records.push(r);
            }
        }
        assert_eq!(
            infer(&records).grouped(),
            0,
            "two without a department: no group"
        );
        let mut refused = rec("Practitioner/9", "Patient/1", 99);
        refused.outcome = 4;
        records.push(refused);
        assert_eq!(infer(&records), infer(&records[..18]));
        let two = infer(&records[..18]);
        assert_eq!(two.alone.len(), 2);
    }

    /// A record opened by more than `MAX_RECORD_USERS` users ties none of them, and is
    /// counted so that `train` can say it.
    #[test]
    fn a_record_everyone_opens_ties_no_one_and_is_counted() {
        let records: Vec<AuditRecord> = (0..=MAX_RECORD_USERS)
            .map(|u| rec(&format!("Practitioner/{u}"), "Patient/all", u as i64))
            .collect();
        let g = infer(&records);
        assert_eq!((g.crowded_records, g.grouped()), (1, 0));
        assert_eq!(g.alone.len(), MAX_RECORD_USERS + 1);
        assert_eq!(
            infer(&records[1..]).crowded_records,
            0,
            "exactly the bound ties"
        );
    }

    /// The same events give the same groups, in whatever order users first appear.
    #[test]
    fn the_grouping_is_deterministic() {
        let mut records = Vec::new();
        for p in 0..20 {
            for u in 0..9 {
                if (u / 3) == (p % 3) || u == p % 9 {
                    records.push(rec(
                        &format!("Practitioner/{u}"),
                        &format!("Patient/{p}"),
                        p,
                    ));
                }
            }
        }
        let once = infer(&records);
        records.reverse();
        assert_eq!(infer(&records), once);
        assert_eq!(once.groups.len(), 3, "{once:?}");
    }
}
