//! A rollout's decisions, pure: given each target gateway's state, what the
//! database says of it now (online, the deployment's progress, its app as
//! its status reports it) and the time, [`step`] moves the targets on and
//! says what to send. The driver (`rollouts`) does the I/O around it, so
//! waves, soaks, health, the abort threshold, the rate limit and offline
//! gateways are all unit-tested here with the time given.
//!
//! A target goes `waiting` → `offered` (manifest sent; chunks follow when
//! the gateway asks) → `deployed` (the gateway swapped it in; soaking) →
//! `healthy`, or `failed` on the way. When a rollout aborts, every target
//! that took the version is sent the signed rollback order
//! (`rollback-sent`) until it answers (`rolled-back`).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A manifest or rollback order that got no word back is sent again after
/// this long (milliseconds), while its gateway is online.
pub const SEND_AGAIN_MS: i64 = 10_000;

/// One wave: how far the rollout reaches once it is done (a share of all
/// targets, at least `min` of them), and how long each gateway in it must
/// stay healthy after its swap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    pub percent: f64,
    #[serde(default)]
    pub min: usize,
    pub soak_s: u64,
}

/// What a gateway that is offline when its wave comes costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Offline {
    /// It gets the version when it comes back; the rollout waits for it.
    Wait,
    /// It counts as failed once its wave has waited this long.
    FailAfterS(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub waves: Vec<Wave>,
    /// Abort once more than this share of the gateways the waves so far
    /// reached failed (when a wave is done, of those that executed): 0
    /// aborts at the first failure.
    pub max_failures: f64,
    /// New gateways offered per minute at most.
    #[serde(default)]
    pub rate_per_minute: Option<u32>,
    pub offline: Offline,
}

impl Policy {
    /// Refuse a policy that cannot run.
    pub fn check(&self) -> Result<(), String> {
        if self.waves.is_empty() {
            return Err("a rollout needs at least one wave".into());
        }
        let mut last = 0.0;
        for (i, wave) in self.waves.iter().enumerate() {
            if !(wave.percent > 0.0 && wave.percent <= 100.0) {
                return Err(format!(
                    "wave {}: {}% is not in (0, 100]",
                    i + 1,
                    wave.percent
                ));
            }
            if wave.percent < last {
                return Err(format!(
                    "wave {}: {}% reaches less far than the wave before ({last}%)",
                    i + 1,
                    wave.percent
                ));
            }
            last = wave.percent;
        }
        if last != 100.0 {
            return Err(format!("the last wave reaches {last}%, not 100%"));
        }
        if !(0.0..=1.0).contains(&self.max_failures) {
            return Err(format!(
                "max_failures {} is not a share between 0 and 1",
                self.max_failures
            ));
        }
        if self.rate_per_minute == Some(0) {
            return Err("a rate of 0 gateways a minute would never start".into());
        }
        Ok(())
    }

    /// How many targets (of `total`) waves `0..=wave` reach together.
    pub fn reach(&self, wave: usize, total: usize) -> usize {
        let w = &self.waves[wave.min(self.waves.len() - 1)];
        let share = ((w.percent / 100.0) * total as f64).ceil() as usize;
        share.max(w.min).min(total)
    }
}

/// Waves as the CLI writes them: `PERCENT%[:MIN[:SOAK]]`, comma-separated,
/// SOAK in seconds or with a unit (`30s`, `10m`, `1h`; default 60 s).
pub fn parse_waves(text: &str) -> Result<Vec<Wave>, String> {
    text.split(',')
        .map(|part| {
            let mut fields = part.trim().split(':');
            let percent = fields.next().unwrap_or_default();
            let percent: f64 = percent
                .strip_suffix('%')
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| {
                    format!("wave {part:?}: {percent:?} is not a percentage like 10%")
                })?;
            let min = match fields.next() {
                None | Some("") => 0,
                Some(m) => m
                    .trim()
                    .parse()
                    .map_err(|_| format!("wave {part:?}: {m:?} is not a number of gateways"))?,
            };
            let soak_s = match fields.next() {
                None | Some("") => 60,
                Some(s) => parse_duration_s(s.trim()).ok_or_else(|| {
                    format!("wave {part:?}: {s:?} is not a duration like 30s or 10m")
                })?,
            };
            if fields.next().is_some() {
                return Err(format!("wave {part:?}: more than PERCENT%:MIN:SOAK"));
            }
            Ok(Wave {
                percent,
                min,
                soak_s,
            })
        })
        .collect()
}

/// `30`, `30s`, `10m`, `2h` as seconds.
pub fn parse_duration_s(text: &str) -> Option<u64> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok()?;
    match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => None,
    }
}

/// `wait` or `fail:SECONDS` (a duration with a unit also).
pub fn parse_offline(text: &str) -> Result<Offline, String> {
    match text {
        "wait" => Ok(Offline::Wait),
        _ => text
            .strip_prefix("fail:")
            .and_then(parse_duration_s)
            .map(Offline::FailAfterS)
            .ok_or_else(|| format!("--offline {text:?}: wait, or fail:SECONDS")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetState {
    Waiting,
    Offered,
    Deployed,
    Healthy,
    Failed,
    RollbackSent,
    RolledBack,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Waiting => "waiting",
            TargetState::Offered => "offered",
            TargetState::Deployed => "deployed",
            TargetState::Healthy => "healthy",
            TargetState::Failed => "failed",
            TargetState::RollbackSent => "rollback-sent",
            TargetState::RolledBack => "rolled-back",
        }
    }

    /// The state named as [`as_str`](Self::as_str) (and serde) name it.
    pub fn parse(text: &str) -> Option<TargetState> {
        serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
    }
}

/// One target gateway of a rollout, as the database keeps it. Times are
/// milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub gateway: String,
    pub state: TargetState,
    /// The wave it was put in, once its wave came.
    pub wave: Option<usize>,
    /// When its wave came (for the offline timeout).
    pub wave_at: Option<i64>,
    /// When the manifest or the rollback order was last sent.
    pub sent_at: Option<i64>,
    /// When it was first offered (for the rate limit).
    pub first_offered_at: Option<i64>,
    /// Whether the chunks went since the last offer.
    pub chunks_sent: bool,
    pub deployed_at: Option<i64>,
    /// Its app's restarts when it was first seen on the new component.
    pub restarts: Option<i64>,
    /// Why it failed, or what the gateway said.
    pub detail: Option<String>,
}

impl Target {
    pub fn new(gateway: String) -> Target {
        Target {
            gateway,
            state: TargetState::Waiting,
            wave: None,
            wave_at: None,
            sent_at: None,
            first_offered_at: None,
            chunks_sent: false,
            deployed_at: None,
            restarts: None,
            detail: None,
        }
    }
}

/// A gateway's progress on a deployment (or rollback) as stored from its
/// `deploy/res`.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub stage: String,
    pub received: i64,
    /// What the gateway said: its message or its error.
    pub said: Option<String>,
    /// When it was stored (ms).
    pub at: i64,
}

/// The rollout's app on a gateway, as its latest status reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSeen {
    pub component: String,
    pub state: String,
    pub restarts: i64,
    /// When that status was stored (ms).
    pub at: i64,
}

/// What the database says of one target now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub online: bool,
    pub deployment: Option<Progress>,
    pub rollback: Option<Progress>,
    pub app: Option<AppSeen>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    Running,
    Aborting,
    Aborted,
    Completed,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Aborting => "aborting",
            RolloutState::Aborted => "aborted",
            RolloutState::Completed => "completed",
        }
    }

    /// The state named as [`as_str`](Self::as_str) (and serde) name it.
    pub fn parse(text: &str) -> Option<RolloutState> {
        serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
    }
}

/// The rollout as [`step`] sees and changes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub state: RolloutState,
    /// The wave under way.
    pub wave: usize,
    /// The digest of the component rolled out.
    pub sha256: String,
    pub policy: Policy,
    pub reason: Option<String>,
}

/// What the driver must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Send {
    Offer(String),
    Chunks(String),
    Rollback(String),
}

/// One step at `now` (ms): the targets (in rollout order) and the rollout
/// move on; what to send comes back.
pub fn step(
    rollout: &mut Rollout,
    targets: &mut [Target],
    observed: &HashMap<String, Observed>,
    now: i64,
) -> Vec<Send> {
    let mut sends = Vec::new();
    let nobody = Observed::default();
    for target in targets.iter_mut() {
        let seen = observed.get(&target.gateway).unwrap_or(&nobody);
        follow(rollout, target, seen, now, &mut sends);
    }
    if rollout.state == RolloutState::Running {
        // Against the gateways the waves so far reached: once a wave is
        // done they have all executed, and before that the rollout stops
        // as soon as the failures are past the share whatever the rest do.
        let reached = targets.iter().filter(|t| t.wave.is_some()).count();
        let failed = count(targets, &[TargetState::Failed]);
        if failed > 0 && failed as f64 > rollout.policy.max_failures * reached as f64 {
            rollout.state = RolloutState::Aborting;
            rollout.reason = Some(format!(
                "{failed} of the {reached} gateways reached so far failed, more than the {}% allowed",
                rollout.policy.max_failures * 100.0
            ));
        }
    }
    match rollout.state {
        RolloutState::Running => advance(rollout, targets, now, &mut sends),
        RolloutState::Aborting => {
            // Everything that took the version is sent back, failed or not
            // (one the gateway already rolled back answers that there is
            // nothing to do); the rest of the fleet is left alone.
            for target in targets.iter_mut() {
                let took = target.deployed_at.is_some();
                if took
                    && matches!(
                        target.state,
                        TargetState::Deployed | TargetState::Healthy | TargetState::Failed
                    )
                {
                    target.state = TargetState::RollbackSent;
                    target.sent_at = Some(now);
                    sends.push(Send::Rollback(target.gateway.clone()));
                }
            }
            // Done once nothing that took the version is left on it, and no
            // offered gateway could still take it: one online that was
            // offered lately may yet deploy it (and then goes back too).
            let blocking = targets.iter().any(|t| match t.state {
                TargetState::Deployed | TargetState::Healthy | TargetState::RollbackSent => true,
                TargetState::Offered => {
                    observed.get(&t.gateway).is_some_and(|o| o.online)
                        && now - t.sent_at.unwrap_or(i64::MIN) < 3 * SEND_AGAIN_MS
                }
                _ => false,
            });
            if !blocking {
                rollout.state = RolloutState::Aborted;
            }
        }
        RolloutState::Aborted | RolloutState::Completed => {}
    }
    sends
}

fn count(targets: &[Target], states: &[TargetState]) -> usize {
    targets.iter().filter(|t| states.contains(&t.state)).count()
}

/// Move one target on from what its gateway said and reports.
fn follow(
    rollout: &Rollout,
    target: &mut Target,
    seen: &Observed,
    now: i64,
    sends: &mut Vec<Send>,
) {
    let sent_at = target.sent_at.unwrap_or(i64::MIN);
    // Only what was stored since the last send counts as an answer to it.
    let answer =
        |progress: &Option<Progress>| progress.as_ref().filter(|p| p.at >= sent_at).cloned();
    // A status sent since the offer that shows the new component proves the
    // swap even if the gateway's `deployed` answer was lost (it went to a
    // `serve` instance that died with it in its session, say): offering it
    // again would only be refused as a replay.
    let shows_it = |seen: &Observed| {
        seen.app
            .as_ref()
            .filter(|a| a.component == rollout.sha256 && a.at >= sent_at)
            .map(|a| a.at)
    };
    match target.state {
        TargetState::Offered
            if answer(&seen.deployment).is_none_or(|p| p.stage != "deployed")
                && shows_it(seen).is_some() =>
        {
            target.state = TargetState::Deployed;
            target.deployed_at = shows_it(seen).map(|at| at.min(now));
            target.detail = Some("its status shows the new component".into());
        }
        TargetState::Offered => match answer(&seen.deployment) {
            Some(p) if p.stage == "deployed" => {
                target.state = TargetState::Deployed;
                // When the gateway said so: the soak runs from its swap.
                target.deployed_at = Some(p.at.min(now));
                target.detail = p.said;
            }
            Some(p) if p.stage == "failed" => {
                target.state = TargetState::Failed;
                target.detail = Some(format!(
                    "the gateway refused or failed it: {}",
                    p.said.unwrap_or_default()
                ));
            }
            Some(p) if p.stage == "receiving" && p.received == 0 && !target.chunks_sent => {
                target.chunks_sent = true;
                sends.push(Send::Chunks(target.gateway.clone()));
            }
            Some(p) if p.stage == "receiving" => {}
            // No word since the offer (or `unknown`: it restarted while
            // receiving): offered again, if it can hear it.
            _ if rollout.state == RolloutState::Running => {
                let away_too_long = match (&rollout.policy.offline, target.wave_at) {
                    (Offline::FailAfterS(s), Some(at)) => {
                        !seen.online && now - at >= (*s as i64).saturating_mul(1000)
                    }
                    _ => false,
                };
                if away_too_long {
                    target.state = TargetState::Failed;
                    target.detail = Some("offline through its wave".into());
                } else if seen.online && now - sent_at >= SEND_AGAIN_MS {
                    target.sent_at = Some(now);
                    target.chunks_sent = false;
                    sends.push(Send::Offer(target.gateway.clone()));
                }
            }
            _ => {}
        },
        TargetState::Deployed => {
            let soak_ms = target
                .wave
                .and_then(|w| rollout.policy.waves.get(w))
                .map_or(0, |w| (w.soak_s as i64).saturating_mul(1000));
            let deployed_at = target.deployed_at.unwrap_or(now);
            // A status sent since the offer that shows the new component
            // speaks of it (the gateway sends one as it swaps, just before
            // it says `deployed`); one showing another component speaks of
            // a rollback only if it came after the swap was reported.
            let app = seen.app.as_ref().filter(|a| {
                if a.component == rollout.sha256 {
                    a.at >= sent_at
                } else {
                    a.at > deployed_at
                }
            });
            if let Some(app) = app {
                if app.component != rollout.sha256 {
                    target.state = TargetState::Failed;
                    target.detail = Some(format!(
                        "the gateway no longer runs it (its app is {} on component {}): rolled back on the gateway",
                        app.state,
                        short(&app.component)
                    ));
                    return;
                }
                let baseline = *target.restarts.get_or_insert(app.restarts);
                if app.state != "running" || app.restarts > baseline {
                    target.state = TargetState::Failed;
                    target.detail = Some(format!(
                        "unhealthy after its swap: {}, {} restart(s)",
                        app.state,
                        app.restarts - baseline
                    ));
                    return;
                }
                if now - deployed_at >= soak_ms {
                    target.state = TargetState::Healthy;
                    target.detail =
                        Some(format!("healthy for {} s after its swap", soak_ms / 1000));
                }
            }
        }
        TargetState::RollbackSent => match answer(&seen.rollback) {
            Some(p) if p.stage == "rolled-back" => {
                target.state = TargetState::RolledBack;
                let said = p.said.unwrap_or_default();
                target.detail = Some(match target.detail.take() {
                    Some(before) => format!("{before}; then rolled back: {said}"),
                    None => format!("rolled back: {said}"),
                });
            }
            Some(p) if p.stage == "failed" => {
                // Said, and left for the operator: sending it again would
                // get the same answer.
                target.state = TargetState::Failed;
                target.detail = Some(format!(
                    "the rollback failed: {}",
                    p.said.unwrap_or_default()
                ));
            }
            _ if seen.online && now - sent_at >= SEND_AGAIN_MS => {
                target.sent_at = Some(now);
                sends.push(Send::Rollback(target.gateway.clone()));
            }
            _ => {}
        },
        TargetState::Waiting
        | TargetState::Healthy
        | TargetState::Failed
        | TargetState::RolledBack => {}
    }
}

/// Start waves and offer their gateways, within the rate; complete the
/// rollout when the last wave is done.
fn advance(rollout: &mut Rollout, targets: &mut [Target], now: i64, sends: &mut Vec<Send>) {
    let total = targets.len();
    let done = |t: &Target| matches!(t.state, TargetState::Healthy | TargetState::Failed);
    loop {
        let reach = rollout.policy.reach(rollout.wave, total);
        // Put the wave's gateways in it (the first `reach`, in order).
        for target in targets.iter_mut().take(reach) {
            if target.wave.is_none() {
                target.wave = Some(rollout.wave);
                target.wave_at = Some(now);
            }
        }
        let wave_done = targets.iter().take(reach).all(done);
        if !wave_done {
            break;
        }
        if rollout.wave + 1 >= rollout.policy.waves.len() {
            rollout.state = RolloutState::Completed;
            return;
        }
        rollout.wave += 1;
    }
    // Offer the waiting gateways of the waves under way, as the rate allows.
    let mut allowed = match rollout.policy.rate_per_minute {
        None => usize::MAX,
        Some(rate) => {
            let recent = targets
                .iter()
                .filter(|t| t.first_offered_at.is_some_and(|at| now - at < 60_000))
                .count();
            (rate as usize).saturating_sub(recent)
        }
    };
    for target in targets.iter_mut() {
        if allowed == 0 {
            break;
        }
        if target.state != TargetState::Waiting || target.wave.is_none() {
            continue;
        }
        target.state = TargetState::Offered;
        target.first_offered_at = Some(now);
        target.chunks_sent = false;
        allowed -= 1;
        // An offline gateway's offer waits in its broker session; it is
        // sent again when it is heard from (see `follow`).
        target.sent_at = Some(now);
        sends.push(Send::Offer(target.gateway.clone()));
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const OLD: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn policy(waves: &[(f64, usize, u64)], max_failures: f64) -> Policy {
        Policy {
            waves: waves
                .iter()
                .map(|&(percent, min, soak_s)| Wave {
                    percent,
                    min,
                    soak_s,
                })
                .collect(),
            max_failures,
            rate_per_minute: None,
            offline: Offline::Wait,
        }
    }

    fn rollout(policy: Policy) -> Rollout {
        Rollout {
            state: RolloutState::Running,
            wave: 0,
            sha256: NEW.into(),
            policy,
            reason: None,
        }
    }

    fn fleet(n: usize) -> Vec<Target> {
        (0..n).map(|i| Target::new(format!("gw-{i:02}"))).collect()
    }

    fn online(targets: &[Target]) -> HashMap<String, Observed> {
        targets
            .iter()
            .map(|t| {
                (
                    t.gateway.clone(),
                    Observed {
                        online: true,
                        ..Observed::default()
                    },
                )
            })
            .collect()
    }

    fn progress(stage: &str, at: i64) -> Option<Progress> {
        Some(Progress {
            stage: stage.into(),
            received: 0,
            said: None,
            at,
        })
    }

    fn running(component: &str, restarts: i64, at: i64) -> Option<AppSeen> {
        Some(AppSeen {
            component: component.into(),
            state: "running".into(),
            restarts,
            at,
        })
    }

    fn offered(sends: &[Send]) -> Vec<String> {
        sends
            .iter()
            .filter_map(|s| match s {
                Send::Offer(g) => Some(g.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every offered gateway deploys at `at` and runs the new component.
    fn deploy_all(targets: &[Target], seen: &mut HashMap<String, Observed>, at: i64) {
        for t in targets.iter().filter(|t| t.state == TargetState::Offered) {
            let o = seen.get_mut(&t.gateway).expect("seen");
            o.deployment = progress("deployed", at);
            o.app = running(NEW, 0, at);
        }
    }

    #[test]
    fn waves_offline_rules_and_durations_parse_as_the_cli_writes_them() {
        let waves = parse_waves("1%:2:10m, 10%,100%::30s").expect("waves");
        assert_eq!(
            waves,
            [
                Wave {
                    percent: 1.0,
                    min: 2,
                    soak_s: 600
                },
                Wave {
                    percent: 10.0,
                    min: 0,
                    soak_s: 60
                },
                Wave {
                    percent: 100.0,
                    min: 0,
                    soak_s: 30
                },
            ]
        );
        for bad in ["10", "10%:x", "10%:1:5y", "10%:1:5s:9", ""] {
            assert!(parse_waves(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_offline("wait"), Ok(Offline::Wait));
        assert_eq!(parse_offline("fail:2m"), Ok(Offline::FailAfterS(120)));
        assert!(parse_offline("fail").is_err());
        assert_eq!(parse_duration_s("45"), Some(45));
        assert_eq!(parse_duration_s("1h"), Some(3600));
    }

    #[test]
    fn states_read_back_as_they_are_stored() {
        use TargetState::*;
        for state in [
            Waiting,
            Offered,
            Deployed,
            Healthy,
            Failed,
            RollbackSent,
            RolledBack,
        ] {
            assert_eq!(TargetState::parse(state.as_str()), Some(state));
        }
        for state in [
            RolloutState::Running,
            RolloutState::Aborting,
            RolloutState::Aborted,
            RolloutState::Completed,
        ] {
            assert_eq!(RolloutState::parse(state.as_str()), Some(state));
        }
        assert_eq!(TargetState::parse("lost"), None);
    }

    #[test]
    fn waves_reach_their_share_at_least_their_minimum_and_the_last_reaches_all() {
        let p = policy(&[(1.0, 2, 0), (10.0, 0, 0), (100.0, 0, 0)], 0.0);
        assert_eq!(p.reach(0, 100), 2, "1% of 100 is 1, but at least 2");
        assert_eq!(p.reach(1, 100), 10);
        assert_eq!(p.reach(2, 100), 100);
        assert_eq!(p.reach(0, 1), 1, "never more than there are");
        assert!(p.check().is_ok());
        assert!(
            policy(&[(50.0, 0, 0)], 0.0).check().is_err(),
            "must end at 100%"
        );
        assert!(
            policy(&[(50.0, 0, 0), (10.0, 0, 0), (100.0, 0, 0)], 0.0)
                .check()
                .is_err()
        );
        assert!(policy(&[], 0.0).check().is_err());
        assert!(policy(&[(100.0, 0, 0)], 1.5).check().is_err());
    }

    #[test]
    fn a_good_version_goes_wave_by_wave_after_each_soak_and_completes() {
        let mut r = rollout(policy(&[(25.0, 1, 10), (100.0, 0, 10)], 0.0));
        let mut targets = fleet(4);
        let mut seen = online(&targets);
        let sends = step(&mut r, &mut targets, &seen, 0);
        assert_eq!(offered(&sends), ["gw-00"], "the first wave is one gateway");

        // It asks for the chunks, then deploys.
        seen.get_mut("gw-00").expect("gw").deployment = progress("receiving", 100);
        assert_eq!(
            step(&mut r, &mut targets, &seen, 100),
            [Send::Chunks("gw-00".into())]
        );
        assert!(
            step(&mut r, &mut targets, &seen, 200).is_empty(),
            "chunks once"
        );
        deploy_all(&targets, &mut seen, 1_000);
        step(&mut r, &mut targets, &seen, 1_000);
        assert_eq!(targets[0].state, TargetState::Deployed);
        // Soaking: nothing more happens for 10 s.
        assert!(step(&mut r, &mut targets, &seen, 10_999).is_empty());
        assert_eq!(targets[0].state, TargetState::Deployed);
        // Healthy, and the next wave takes the rest.
        let sends = step(&mut r, &mut targets, &seen, 11_000);
        assert_eq!(targets[0].state, TargetState::Healthy);
        assert_eq!(offered(&sends), ["gw-01", "gw-02", "gw-03"]);
        assert_eq!(r.wave, 1);
        deploy_all(&targets, &mut seen, 12_000);
        step(&mut r, &mut targets, &seen, 12_000);
        step(&mut r, &mut targets, &seen, 22_000);
        assert_eq!(r.state, RolloutState::Completed);
        assert!(targets.iter().all(|t| t.state == TargetState::Healthy));
    }

    #[test]
    fn a_version_that_fails_its_soak_aborts_the_rollout_and_is_rolled_back() {
        let mut r = rollout(policy(&[(50.0, 0, 10), (100.0, 0, 10)], 0.0));
        let mut targets = fleet(4);
        let mut seen = online(&targets);
        step(&mut r, &mut targets, &seen, 0);
        deploy_all(&targets, &mut seen, 1_000);
        step(&mut r, &mut targets, &seen, 1_000);
        assert_eq!(targets[0].state, TargetState::Deployed);
        assert_eq!(targets[1].state, TargetState::Deployed);
        // gw-00 traps 5 s after its swap; gw-01 stays well.
        seen.get_mut("gw-00").expect("gw").app = Some(AppSeen {
            component: NEW.into(),
            state: "restarting".into(),
            restarts: 1,
            at: 6_000,
        });
        let sends = step(&mut r, &mut targets, &seen, 6_000);
        // Failed, which aborts the rollout, which sends it back.
        assert_eq!(targets[0].state, TargetState::RollbackSent);
        assert!(
            targets[0]
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("restarting"))
        );
        assert_eq!(r.state, RolloutState::Aborting);
        // Both that took it are sent back, the failed one too; the second
        // wave never starts.
        assert_eq!(
            sends,
            [
                Send::Rollback("gw-00".into()),
                Send::Rollback("gw-01".into())
            ]
        );
        assert_eq!(targets[1].state, TargetState::RollbackSent);
        assert!(targets[2..].iter().all(|t| t.state == TargetState::Waiting));
        // No answer for a while: sent again.
        seen.get_mut("gw-00").expect("gw").rollback = progress("rolled-back", 7_000);
        step(&mut r, &mut targets, &seen, 7_000);
        assert_eq!(targets[0].state, TargetState::RolledBack);
        assert!(
            targets[0]
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("unhealthy") && d.contains("then rolled back")),
            "{:?}",
            targets[0].detail
        );
        assert_eq!(
            step(&mut r, &mut targets, &seen, 6_000 + SEND_AGAIN_MS),
            [Send::Rollback("gw-01".into())]
        );
        seen.get_mut("gw-01").expect("gw").rollback = progress("rolled-back", 17_000);
        step(&mut r, &mut targets, &seen, 17_000);
        assert_eq!(targets[1].state, TargetState::RolledBack);
        assert_eq!(r.state, RolloutState::Aborted);
    }

    #[test]
    fn a_gateway_that_rolls_the_version_back_itself_counts_as_failed() {
        let mut r = rollout(policy(&[(100.0, 0, 10)], 0.4));
        let mut targets = fleet(2);
        let mut seen = online(&targets);
        step(&mut r, &mut targets, &seen, 0);
        deploy_all(&targets, &mut seen, 1_000);
        step(&mut r, &mut targets, &seen, 1_000);
        // A status from before the swap says nothing of the new version.
        seen.get_mut("gw-00").expect("gw").app = running(OLD, 0, 500);
        step(&mut r, &mut targets, &seen, 2_000);
        assert_eq!(targets[0].state, TargetState::Deployed);
        seen.get_mut("gw-00").expect("gw").app = running(OLD, 0, 3_000);
        let sends = step(&mut r, &mut targets, &seen, 3_000);
        // Both that took it get the rollback order (gw-00 will answer that
        // there is nothing to do).
        assert_eq!(
            sends,
            [
                Send::Rollback("gw-00".into()),
                Send::Rollback("gw-01".into())
            ]
        );
        assert!(
            targets[0]
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("no longer runs it"))
        );
        // One of the two reached failed: 50% > 40%.
        assert_eq!(r.state, RolloutState::Aborting);
    }

    #[test]
    fn a_status_showing_the_new_component_counts_as_deployed_when_the_answer_was_lost() {
        let mut r = rollout(policy(&[(100.0, 0, 5)], 0.0));
        let mut targets = fleet(1);
        let mut seen = online(&targets);
        step(&mut r, &mut targets, &seen, 0);
        // No `deployed` ever arrives, but the status shows the swap.
        seen.get_mut("gw-00").expect("gw").app = running(NEW, 0, 2_000);
        let sends = step(&mut r, &mut targets, &seen, 2_000);
        assert!(sends.is_empty(), "not offered again: {sends:?}");
        assert_eq!(targets[0].state, TargetState::Deployed);
        step(&mut r, &mut targets, &seen, 7_000);
        assert_eq!(targets[0].state, TargetState::Healthy);
        assert_eq!(r.state, RolloutState::Completed);
    }

    #[test]
    fn failures_within_the_threshold_do_not_abort() {
        let mut r = rollout(policy(&[(100.0, 0, 0)], 0.5));
        let mut targets = fleet(4);
        let mut seen = online(&targets);
        step(&mut r, &mut targets, &seen, 0);
        deploy_all(&targets, &mut seen, 1_000);
        seen.get_mut("gw-03").expect("gw").deployment = progress("failed", 1_000);
        seen.get_mut("gw-03").expect("gw").app = running(OLD, 0, 1_000);
        step(&mut r, &mut targets, &seen, 1_000);
        step(&mut r, &mut targets, &seen, 2_000);
        assert_eq!(targets[3].state, TargetState::Failed);
        assert_eq!(r.state, RolloutState::Completed, "1 of 4 is within 50%");
    }

    #[test]
    fn an_offline_gateway_waits_or_fails_as_the_policy_says() {
        for (offline, expect) in [
            (Offline::Wait, TargetState::Offered),
            (Offline::FailAfterS(30), TargetState::Failed),
        ] {
            let mut p = policy(&[(100.0, 0, 0)], 1.0);
            p.offline = offline;
            let mut r = rollout(p);
            let mut targets = fleet(2);
            let mut seen = online(&targets);
            seen.get_mut("gw-01").expect("gw").online = false;
            step(&mut r, &mut targets, &seen, 0);
            deploy_all(&targets[..1], &mut seen, 1_000);
            step(&mut r, &mut targets, &seen, 1_000);
            step(&mut r, &mut targets, &seen, 2_000);
            // Away: not offered again while it cannot hear it.
            assert!(offered(&step(&mut r, &mut targets, &seen, 20_000)).is_empty());
            step(&mut r, &mut targets, &seen, 31_000);
            assert_eq!(targets[1].state, expect);
            if expect == TargetState::Offered {
                // Back: offered again, and it catches up.
                seen.get_mut("gw-01").expect("gw").online = true;
                let sends = step(&mut r, &mut targets, &seen, 32_000);
                assert_eq!(offered(&sends), ["gw-01"]);
                deploy_all(&targets, &mut seen, 33_000);
                step(&mut r, &mut targets, &seen, 33_000);
                step(&mut r, &mut targets, &seen, 34_000);
                assert_eq!(r.state, RolloutState::Completed);
            } else {
                // Failed counts toward the threshold but 1 of 2 is within 100%.
                assert_eq!(r.state, RolloutState::Completed);
            }
        }
    }

    #[test]
    fn the_rate_limit_spaces_out_first_offers() {
        let mut p = policy(&[(100.0, 0, 0)], 0.0);
        p.rate_per_minute = Some(2);
        let mut r = rollout(p);
        let mut targets = fleet(5);
        let seen = online(&targets);
        assert_eq!(offered(&step(&mut r, &mut targets, &seen, 0)).len(), 2);
        assert!(
            offered(&step(&mut r, &mut targets, &seen, 59_999))
                .iter()
                .all(|g| g == "gw-00" || g == "gw-01")
        );
        let later = offered(&step(&mut r, &mut targets, &seen, 60_000));
        assert!(
            later.contains(&"gw-02".to_string()) && later.contains(&"gw-03".to_string()),
            "{later:?}"
        );
        assert!(!later.contains(&"gw-04".to_string()));
    }

    #[test]
    fn an_abort_by_the_operator_rolls_back_what_took_it_and_offers_nothing_more() {
        let mut r = rollout(policy(&[(50.0, 0, 60), (100.0, 0, 0)], 0.0));
        let mut targets = fleet(4);
        let mut seen = online(&targets);
        step(&mut r, &mut targets, &seen, 0);
        deploy_all(&targets, &mut seen, 1_000);
        // gw-01 deployed later than gw-00: still offered when the abort comes.
        seen.get_mut("gw-01").expect("gw").deployment = None;
        seen.get_mut("gw-01").expect("gw").app = running(OLD, 0, 1_000);
        step(&mut r, &mut targets, &seen, 1_000);
        r.state = RolloutState::Aborting;
        let sends = step(&mut r, &mut targets, &seen, 2_000);
        assert_eq!(sends, [Send::Rollback("gw-00".into())]);
        // The straggler deploys after the abort: it is sent back too.
        seen.get_mut("gw-01").expect("gw").deployment = progress("deployed", 3_000);
        let sends = step(&mut r, &mut targets, &seen, 3_000);
        assert_eq!(targets[1].state, TargetState::RollbackSent, "{sends:?}");
        assert!(sends.contains(&Send::Rollback("gw-01".into())));
        assert!(targets[2..].iter().all(|t| t.state == TargetState::Waiting));
    }
}
