//! Crash trials and concurrency of the vault (issue 9): the real `keybag` binary is killed
//! with SIGKILL at random points of `keybag cloud push` and `keybag cloud prune`, ≥ 50 times
//! each, and pushes run two at a time beside a prune that marks and deletes.
//!
//! * **push**: after the kill, `cloud check --read-data` passes; the resumed push succeeds and stores no
//!   chunk that the killed push had left in a complete pack. Precisely: let U be the chunks of
//!   every pack stored after the kill (indexed or not; a pack cut mid-upload is a temp file no
//!   listing shows, so its chunks are not in U and may be stored again). Then no pack the
//!   resumed push added holds a chunk of U, no chunk is in two packs, the resumed push's
//!   `new_bytes` plus the plaintext bytes of U equal the `new_bytes` of an uninterrupted push
//!   into the same (copied) empty repository, its `stored_bytes` equal the bytes of the packs
//!   it added; every tenth trial also checks `--read-data` and pulls the snapshot
//!   byte-identical after the resumed push.
//! * **prune** (forget done before; grace 0 s, so the run both deletes what an earlier prune
//!   marked and marks what the forget freed): after the kill, `check --read-data` passes (every
//!   blob of every pack opens, every chunk of every snapshot is indexed in a stored pack) and,
//!   every fifth trial, every snapshot not forgotten pulls byte-identical to its backup; the
//!   next prune succeeds,
//!   every pack the uninterrupted prune deleted is gone and no stale index object is left.
//! * **concurrency**: two pushes at once (one reusing chunks of packs freed by a forget, or
//!   two of the same backup) while prunes with grace 0 s run back to back; afterwards
//!   `check --read-data` passes, and after two more prunes (mark, delete) it passes again and
//!   every snapshot pulls byte-identical.
//!
//! The repository is made through the library with small chunks (8 KiB on average) and
//! 64 KiB packs, so a ~1 MB backup makes ~20 packs, and with cheap Argon2 costs (64 MiB, one
//! pass: the smallest the library accepts). Kill points: the uninterrupted run is timed once (T, never asserted); the delays
//! are uniform in [0, T] from a seeded generator (`KEYBAG_CRASH_SEED` replays them), two
//! trials kill at once and two after the exit. Secrets travel in `KEYBAG_REPO_PASSWORD`.

mod crash;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crash::{
    copy, kill_points, run_and_kill, seed, timed, tree, trial_dirs, Ctx, Kill, Rng, TRIALS,
};
use mobilebackup::plists::DeviceInfo;
use mobilebackup::writer::{BackupWriter, Content, NewRecord, WriterOptions};
use serde_json::Value;
use vault::keys::{Argon2Params, Params, Secret, MIN_MEMORY_KIB};
use vault::storage::{Kind, LocalStorage, Storage};
use vault::{read_pack_header, Id, Repository};

const REPO_PW: &str = "vault crash trials: repository password";
const UDID_A: &str = "00008110-000A11111111001E";
const UDID_C: &str = "00008110-000C33333333001E";

// ---------------------------------------------------------------- repositories and backups

fn storage(repo: &Path) -> Arc<dyn Storage> {
    Arc::new(LocalStorage::new(repo))
}

/// An empty repository with small chunks and packs and cheap password hashing.
fn init_repo(repo: &Path) {
    Repository::init(
        storage(repo),
        REPO_PW.as_bytes(),
        Some(Argon2Params {
            m_kib: MIN_MEMORY_KIB,
            t: 1,
            p: 1,
        }),
        Params {
            chunk_min: 1 << 10,
            chunk_avg: 4 << 10,
            chunk_max: 16 << 10,
            pack_target: 64 << 10,
        },
    )
    .unwrap();
}

fn open_repo(repo: &Path) -> Repository {
    Repository::open(storage(repo), &Secret::Password(REPO_PW.as_bytes())).unwrap()
}

/// One stored pack: its size and its blobs (ID, plaintext length).
struct Pack {
    size: u64,
    blobs: Vec<(Id, u32)>,
}

/// Every pack stored (indexed or not), read from its sealed header.
fn packs(r: &Repository) -> BTreeMap<Id, Pack> {
    r.storage()
        .list(Kind::Data)
        .unwrap()
        .into_iter()
        .map(|(name, size)| {
            let h = read_pack_header(r, &name, size).unwrap();
            let blobs = h.blobs.iter().map(|e| (e.id, e.raw_len)).collect();
            (h.pack, Pack { size, blobs })
        })
        .collect()
}

/// An unencrypted backup of the phone `udid`, revision `rev`: 30 files of 2–32 KB of
/// pseudo-random bytes (~500 KB); each revision changes a third of the files and drops a few.
fn backup(out: &Path, udid: &str, rev: u32) {
    let w = BackupWriter::create(
        out,
        WriterOptions {
            device: DeviceInfo {
                udid: Some(udid.into()),
                serial_number: Some("F2LXK0CRASH1".into()),
                device_name: Some(format!("phone {}", &udid[9..13])),
                ..DeviceInfo::default()
            },
            date: UNIX_EPOCH + Duration::from_secs(1_700_000_000 + u64::from(rev) * 86_400),
            ..WriterOptions::default()
        },
    )
    .unwrap();
    let recs: Vec<NewRecord> = (0..30u32)
        .filter(|i| rev == 0 || i % 7 != rev % 7)
        .map(|i| {
            let edits = (1..=rev).filter(|k| i % (k + 2) == 0).count();
            let mut rng = Rng::new(u64::from(i) * 1000 + edits as u64, udid);
            let len = 2_000 + (i as usize * 7_919) % 30_000;
            NewRecord::file(
                "HomeDomain",
                format!("Library/d{}/f{i:03}.bin", i % 4),
                Content::Bytes(rng.bytes(len)),
            )
        })
        .collect();
    w.add_all(recs).unwrap();
    w.finish().unwrap();
}

/// Every regular file under `root`: relative path → sha256.
fn files(root: &Path) -> BTreeMap<String, String> {
    tree(root)
        .into_iter()
        .filter(|(_, v)| v != "dir" && !v.starts_with("link"))
        .collect()
}

// ---------------------------------------------------------------- running keybag

/// `keybag cloud ARGS… --repo REPO --json`, the password in the environment, the client
/// state in `state`.
fn cloud(repo: &Path, state: &Path, args: &[&Path]) -> Command {
    let mut all: Vec<&Path> = vec![Path::new("cloud")];
    all.extend_from_slice(args);
    all.extend_from_slice(&[Path::new("--repo"), repo, Path::new("--json")]);
    let mut cmd = crash::command(
        &all,
        &[
            ("KEYBAG_REPO_PASSWORD", REPO_PW),
            ("KEYBAG_STATE_DIR", state.to_str().unwrap()),
        ],
    );
    cmd.env_remove("KEYBAG_REPO")
        .env_remove("KEYBAG_RECOVERY_KEY");
    cmd
}

fn push(repo: &Path, state: &Path, b: &Path) -> Command {
    cloud(repo, state, &[Path::new("push"), b])
}

fn prune(repo: &Path, state: &Path) -> Command {
    cloud(
        repo,
        state,
        &[Path::new("prune"), Path::new("--grace"), Path::new("0s")],
    )
}

fn check(repo: &Path, state: &Path, read_data: bool) -> Command {
    let mut args = vec![Path::new("check")];
    if read_data {
        args.push(Path::new("--read-data"));
    }
    cloud(repo, state, &args)
}

/// Runs `cmd`: its JSON output, or what went wrong.
fn run_json(mut cmd: Command) -> Result<Value, String> {
    let o = cmd.output().expect("run keybag");
    if !o.status.success() {
        return Err(format!(
            "exit {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    serde_json::from_slice(&o.stdout).map_err(|e| format!("not JSON ({e})"))
}

fn ok_json(cmd: Command) -> Value {
    run_json(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// `check` (with `--read-data`) passes: exit 0 and no problem.
fn check_passes(repo: &Path, state: &Path, read_data: bool) -> Result<Value, String> {
    let v = run_json(check(repo, state, read_data))?;
    match v["problems"].as_array() {
        Some(p) if p.is_empty() => Ok(v),
        _ => Err(format!("check found problems: {v}")),
    }
}

/// Pulls `snapshot` into `out` and compares it with the backup `src`.
fn pulls_identical(
    repo: &Path,
    state: &Path,
    snapshot: &str,
    src: &Path,
    out: &Path,
) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(out);
    run_json(cloud(
        repo,
        state,
        &[Path::new("pull"), Path::new(snapshot), out],
    ))
    .map_err(|e| format!("pull {snapshot}: {e}"))?;
    let (want, got) = (files(src), files(out));
    std::fs::remove_dir_all(out).unwrap();
    if want == got {
        Ok(())
    } else {
        Err(format!(
            "snapshot {snapshot} pulls different files than {}",
            src.display()
        ))
    }
}

fn snapshot_count(repo: &Path) -> usize {
    storage(repo).list(Kind::Snapshots).unwrap().len()
}

/// The snapshot IDs in the repository.
fn snapshot_ids(repo: &Path, state: &Path) -> BTreeSet<String> {
    ok_json(cloud(repo, state, &[Path::new("snapshots")]))
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// A scratch folder in memory when the system has one (/dev/shm): every object the vault
/// stores is synced, and SIGKILL trials do not need the disk (the process dies, not the
/// machine), so the trials need not wait for it.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::Builder::new()
            .prefix("vault-crash-")
            .tempdir_in(shm)
        {
            return t;
        }
    }
    tempfile::tempdir().unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------- push

#[test]
fn push_crash_trials() {
    let start = Instant::now();
    let seed = seed();
    let base = scratch();
    let base = base.path();
    let b = base.join("backup");
    backup(&b, UDID_A, 0);
    let empty = base.join("empty");
    init_repo(&empty);

    // The uninterrupted push: T and the reference accounting.
    let reference = base.join("reference");
    copy(&empty, &reference);
    let (t, out) = timed(push(&reference, &base.join("ref-state"), &b));
    let full: Value = serde_json::from_slice(&out.stdout).unwrap();
    let total_new = full["new_bytes"].as_u64().unwrap();
    let ref_packs = packs(&open_repo(&reference)).len();
    assert!(ref_packs >= 6, "{ref_packs} packs: too few to cut a push");

    let mut rng = Rng::new(seed, "cloud push");
    let (mut nothing, mut partial, mut snapshot_left, mut finished) = (0, 0, 0, 0);
    let mut left_packs = 0usize;
    for (n, kill) in kill_points(&mut rng, TRIALS, t).into_iter().enumerate() {
        let mut ctx = Ctx {
            writer: "cloud push",
            seed,
            n,
            kill,
            notes: Vec::new(),
        };
        let (ws, aux) = trial_dirs(base, n);
        let repo = ws.join("repo");
        let state = aux.join("state");
        copy(&empty, &repo);
        let k = run_and_kill(push(&repo, &state, &b), kill, &aux.join("push.log"));
        ctx.note(format!("killed push: exit {:?}", k.code));
        if k.finished() {
            finished += 1;
        }
        let lib = open_repo(&repo);
        let before = packs(&lib);
        let u: HashMap<Id, u32> = before
            .values()
            .flat_map(|p| p.blobs.iter().copied())
            .collect();
        let snaps = snapshot_count(&repo);
        ctx.note(format!(
            "left {} packs ({} chunks, {} plaintext bytes) and {snaps} snapshot(s)",
            before.len(),
            u.len(),
            u.values().map(|l| u64::from(*l)).sum::<u64>()
        ));
        left_packs += before.len();
        match (before.is_empty(), snaps) {
            (true, 0) => nothing += 1,
            (false, 0) => partial += 1,
            _ => snapshot_left += 1,
        }
        if let Err(e) = check_passes(&repo, &state, true) {
            ctx.fail(format!("check --read-data after the kill: {e}"));
        }
        let resumed = run_json(push(&repo, &state, &b))
            .unwrap_or_else(|e| ctx.fail(format!("the resumed push failed: {e}")));
        ctx.note(format!("resumed push: {resumed}"));
        let after = packs(&lib);
        let added: Vec<&Pack> = after
            .iter()
            .filter(|(id, _)| !before.contains_key(id))
            .map(|(_, p)| p)
            .collect();
        for p in &added {
            if let Some((id, _)) = p.blobs.iter().find(|(id, _)| u.contains_key(id)) {
                ctx.fail(format!(
                    "the resumed push stored chunk {id} again, already in a complete pack"
                ));
            }
        }
        let mut seen = HashSet::new();
        for p in after.values() {
            for (id, _) in &p.blobs {
                ctx.check(seen.insert(*id), format!("chunk {id} is in two packs"));
            }
        }
        let left: u64 = u.values().map(|l| u64::from(*l)).sum();
        ctx.check(
            resumed["new_bytes"].as_u64().unwrap() + left == total_new,
            format!("new bytes of the resumed push + bytes left ({left}) != {total_new}"),
        );
        ctx.check(
            resumed["stored_bytes"].as_u64().unwrap() == added.iter().map(|p| p.size).sum::<u64>(),
            "stored_bytes of the resumed push != the bytes of the packs it added",
        );
        if n % 10 == 0 {
            if let Err(e) = check_passes(&repo, &state, true) {
                ctx.fail(format!("check --read-data after the resumed push: {e}"));
            }
            if let Err(e) = pulls_identical(&repo, &state, "latest", &b, &aux.join("out")) {
                ctx.fail(e);
            }
        }
        std::fs::remove_dir_all(ws.parent().unwrap()).unwrap();
    }
    println!(
        "crash trials cloud push: {TRIALS} trials (seed {seed}, uninterrupted push {:.0} ms, \
         {ref_packs} packs, all trials {:.1} s): {nothing} killed before any pack, {partial} \
         left packs but no snapshot, {snapshot_left} left the snapshot ({finished} had \
         finished); {left_packs} packs left in all, none stored again",
        ms(t),
        start.elapsed().as_secs_f64()
    );
    assert!(
        partial > 0,
        "no trial left a push half done (seed {seed}): the kill points missed the upload"
    );
}

// ---------------------------------------------------------------- prune

/// A repository where a prune has work of both phases: chain A's first snapshot was
/// forgotten and its packs marked by a prune, then its second was forgotten; chain C's
/// only snapshot stays. Returns (template repo, template state, surviving snapshots with
/// their backups).
fn prune_template(base: &Path) -> (PathBuf, PathBuf, Vec<(String, PathBuf)>) {
    let repo = base.join("template");
    let state = base.join("template-state");
    init_repo(&repo);
    let src = |name: &str, udid: &str, rev: u32| {
        let b = base.join(name);
        backup(&b, udid, rev);
        b
    };
    let (a0, a1, a2, c0) = (
        src("a0", UDID_A, 0),
        src("a1", UDID_A, 1),
        src("a2", UDID_A, 2),
        src("c0", UDID_C, 0),
    );
    let id = |v: Value| v["snapshot"].as_str().unwrap().to_string();
    ok_json(push(&repo, &state, &a0));
    let c = id(ok_json(push(&repo, &state, &c0)));
    ok_json(push(&repo, &state, &a1));
    let forget = || {
        ok_json(cloud(
            &repo,
            &state,
            &[
                Path::new("forget"),
                Path::new("--keep-last"),
                Path::new("1"),
            ],
        ))
    };
    forget();
    let first = ok_json(prune(&repo, &state));
    assert!(
        first["marked"].as_u64().unwrap() + first["repacked"].as_u64().unwrap() > 0,
        "the first prune marked nothing: {first}"
    );
    let a = id(ok_json(push(&repo, &state, &a2)));
    forget();
    (repo, state, vec![(a, a2), (c, c0)])
}

#[test]
fn prune_crash_trials() {
    let start = Instant::now();
    let seed = seed();
    let base = scratch();
    let base = base.path();
    let (template, tstate, survivors) = prune_template(base);
    assert_eq!(snapshot_count(&template), 2);
    let template_tree = tree(&template);
    let template_packs: BTreeSet<Id> = packs(&open_repo(&template)).into_keys().collect();

    let reference = base.join("reference");
    copy(&template, &reference);
    copy(&tstate, &base.join("ref-state"));
    let (t, out) = timed(prune(&reference, &base.join("ref-state")));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let deleted: BTreeSet<Id> = template_packs
        .difference(&packs(&open_repo(&reference)).into_keys().collect())
        .copied()
        .collect();
    assert!(
        rep["deleted"].as_u64().unwrap() > 0
            && rep["marked"].as_u64().unwrap() + rep["repacked"].as_u64().unwrap() > 0,
        "the prune must have both phases' work: {rep}"
    );
    assert_eq!(deleted.len() as u64, rep["deleted"].as_u64().unwrap());

    // Most of a prune's time is start-up and key derivation before it changes anything:
    // kill points are drawn from [0.9 × that, T] (measured by opening the repository with
    // `snapshots`), so most land in the prune's own work.
    let (t_open, _) = timed(cloud(
        &reference,
        &base.join("ref-state"),
        &[Path::new("snapshots")],
    ));
    let lo = t_open.mul_f64(0.9).min(t);
    let mut rng = Rng::new(seed, "cloud prune");
    let (mut untouched, mut partial, mut finished) = (0, 0, 0);
    let mut deleted_by_kill = 0usize;
    let points: Vec<Kill> = kill_points(&mut rng, TRIALS, t - lo)
        .into_iter()
        .map(|k| match k {
            Kill::After(d) => Kill::After(lo + d),
            other => other,
        })
        .collect();
    for (n, kill) in points.into_iter().enumerate() {
        let mut ctx = Ctx {
            writer: "cloud prune",
            seed,
            n,
            kill,
            notes: Vec::new(),
        };
        let (ws, aux) = trial_dirs(base, n);
        let repo = ws.join("repo");
        let state = aux.join("state");
        copy(&template, &repo);
        copy(&tstate, &state);
        let k = run_and_kill(prune(&repo, &state), kill, &aux.join("prune.log"));
        ctx.note(format!("killed prune: exit {:?}", k.code));
        let lib = open_repo(&repo);
        let now: BTreeSet<Id> = packs(&lib).into_keys().collect();
        let gone = deleted.iter().filter(|p| !now.contains(p)).count();
        deleted_by_kill += gone;
        ctx.note(format!(
            "{} packs stored, {gone} of the {} to delete deleted",
            now.len(),
            deleted.len()
        ));
        if k.finished() {
            finished += 1;
        } else if tree(&repo) == template_tree {
            untouched += 1;
        } else {
            partial += 1;
        }
        if let Err(e) = check_passes(&repo, &state, true) {
            ctx.fail(format!("check --read-data after the kill: {e}"));
        }
        if n % 5 == 0 {
            for (snap, src) in &survivors {
                if let Err(e) = pulls_identical(&repo, &state, snap, src, &aux.join("out")) {
                    ctx.fail(e);
                }
            }
        }
        let next = run_json(prune(&repo, &state))
            .unwrap_or_else(|e| ctx.fail(format!("the next prune failed: {e}")));
        ctx.note(format!("next prune: {next}"));
        let now: BTreeSet<Id> = packs(&lib).into_keys().collect();
        if let Some(p) = deleted.iter().find(|p| now.contains(p)) {
            ctx.fail(format!("the next prune left pack {p}, which prune deletes"));
        }
        lib.reset_index();
        let stale = lib.index().unwrap().stale.len();
        ctx.check(stale == 0, format!("{stale} stale index objects left"));
        if let Err(e) = check_passes(&repo, &state, false) {
            ctx.fail(format!("check after the next prune: {e}"));
        }
        std::fs::remove_dir_all(ws.parent().unwrap()).unwrap();
    }
    println!(
        "crash trials cloud prune: {TRIALS} trials (seed {seed}, uninterrupted prune {:.0} ms: \
         {} packs deleted, {} marked, {} repacked; all trials {:.1} s): {untouched} killed \
         before any change, {partial} left a prune half done ({deleted_by_kill} packs deleted \
         before the kill in all), {finished} had finished",
        ms(t),
        rep["deleted"],
        rep["marked"],
        rep["repacked"],
        start.elapsed().as_secs_f64()
    );
    assert!(
        partial > 0,
        "no trial left a prune half done (seed {seed}): the kill points missed it"
    );
}

// ---------------------------------------------------------------- concurrency

/// Rounds of two pushes at once beside back-to-back prunes (grace 0 s).
const ROUNDS: usize = 4;

#[test]
fn pushes_and_prunes_at_once_lose_nothing() {
    let start = Instant::now();
    let base = scratch();
    let base = base.path();
    let template = base.join("template");
    let tstate = base.join("template-state");
    init_repo(&template);
    let mk = |name: &str, udid: &str, rev: u32| {
        let b = base.join(name);
        backup(&b, udid, rev);
        b
    };
    let (a0, a1, a2, c0) = (
        mk("a0", UDID_A, 0),
        mk("a1", UDID_A, 1),
        mk("a2", UDID_A, 2),
        mk("c0", UDID_C, 0),
    );
    // A0's packs are only needed by a forgotten snapshot: prunes mark and delete them
    // while a push of A0 again wants to reuse their chunks.
    ok_json(push(&template, &tstate, &a0));
    let s1 = ok_json(push(&template, &tstate, &a1))["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    ok_json(cloud(
        &template,
        &tstate,
        &[
            Path::new("forget"),
            Path::new("--keep-last"),
            Path::new("1"),
        ],
    ));
    let mut prunes_total = 0;
    let mut reports = Vec::new();
    for round in 0..ROUNDS {
        let dir = base.join(format!("round-{round}"));
        let (repo, state) = (dir.join("repo"), dir.join("state"));
        copy(&template, &repo);
        copy(&tstate, &state);
        let pair: [&Path; 2] = if round % 2 == 0 {
            [&a0, &c0]
        } else {
            [&a2, &a2]
        };
        let stop = Arc::new(AtomicBool::new(false));
        let pruner = {
            let (repo, state, stop) = (repo.clone(), state.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) || n < 2 {
                    if let Err(e) = run_json(prune(&repo, &state)) {
                        panic!("round {round}: prune {n} beside the pushes failed: {e}");
                    }
                    n += 1;
                }
                n
            })
        };
        let children: Vec<_> = pair
            .iter()
            .map(|b| {
                push(&repo, &state, b)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut expect: Vec<(String, PathBuf)> = vec![(s1.clone(), a1.clone())];
        for (child, b) in children.into_iter().zip(pair) {
            let o = child.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "round {round}: a push beside the prunes failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            reports.push(format!(
                "new {} stored {}",
                v["new_bytes"], v["stored_bytes"]
            ));
            expect.push((v["snapshot"].as_str().unwrap().to_string(), b.to_path_buf()));
        }
        stop.store(true, Ordering::SeqCst);
        prunes_total += pruner.join().unwrap();
        let verify = |when: &str| {
            if let Err(e) = check_passes(&repo, &state, true) {
                panic!("round {round}, {when}: {e}");
            }
            let ids = snapshot_ids(&repo, &state);
            for (snap, src) in &expect {
                assert!(ids.contains(snap), "round {round}, {when}: {snap} is gone");
                if let Err(e) = pulls_identical(&repo, &state, snap, src, &dir.join("out")) {
                    panic!("round {round}, {when}: {e}");
                }
            }
        };
        if let Err(e) = check_passes(&repo, &state, true) {
            panic!("round {round}, after the pushes: {e}");
        }
        // Two more prunes mark and delete whatever is unused now: nothing a snapshot needs.
        for _ in 0..2 {
            ok_json(prune(&repo, &state));
        }
        verify("after two more prunes");
        std::fs::remove_dir_all(&dir).unwrap();
    }
    println!(
        "vault concurrency: {ROUNDS} rounds of two pushes beside {prunes_total} prunes \
         (grace 0 s) in {:.1} s; pushes: {}",
        start.elapsed().as_secs_f64(),
        reports.join(", ")
    );
}
